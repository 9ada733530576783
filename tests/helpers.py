"""Small shared helpers of the training tests (imported by the test modules)."""
import torch


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
