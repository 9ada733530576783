"""Shared pytest setup.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET=1 must be
set before any module that defines ``@triton.jit`` kernels is imported, so it is
set here, at collection time. With a GPU the real kernels run on CUDA tensors.

The session-scoped factories ``demo_root`` and ``demo_fit`` generate each demo dataset and
train each tiny model once for the whole run; tests share what they return and must not
write into it (a test that changes a dataset or run folder copies it first, shutil.copytree;
the factories check at the session's end that every shared folder is as it was made).
"""
import copy
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def runs_on_cuda(item, has_cuda: bool) -> bool:
    """Whether a collected test exercises CUDA, so that ``pytest -m gpu`` selects it.

    Two kinds besides the explicitly ``gpu``-marked ones: a case parametrised with
    ``device="cuda"`` (the parametrisation exists only where CUDA does), and a test
    marked ``cuda_when_available`` (the Triton kernel tests: compiled kernels on CUDA
    tensors with a GPU, the interpreter on CPU tensors without one). The latter must
    stay unmarked on a CPU machine, where they run interpreted instead of skipping.
    """
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(str(v) == "cuda" or (isinstance(v, torch.device) and v.type == "cuda")
                                    for k, v in callspec.params.items() if "device" in k):
        return True
    return has_cuda and item.get_closest_marker("cuda_when_available") is not None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") is None and runs_on_cuda(item, HAS_CUDA):
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="GPU test: no CUDA device on this machine"))


# ----------------------------------------------------------------------------- shared demo data and runs

#: the recipe of the shared tiny model (``demo_fit()``): one training step, one view per video, no
#: validation pass (the tests use the checkpoint, not its scores)
TINY_FIT = ("solver.epochs=1", "train.limit_train_batches=1", "data.test_crops=1", "data.test_clips=1",
            "eval.validate=false", "output.plot=false")


def _snapshot(folder):
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), folder)] = (st.st_size, st.st_mtime_ns)
    return out


def _check_untouched(snapshots, what):
    """At the session's end: a shared folder still holds exactly the files it was made with."""
    changed = [folder for folder, snap in snapshots.items() if _snapshot(folder) != snap]
    assert not changed, f"a test wrote into the shared {what} {changed}: copy it first (shutil.copytree)"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """Factory ``demo_root(train_per_class=2, val_per_class=1) -> str``: the root of a generated demo
    dataset (``tdsk.demo.generate``, real h264 clips, 9 classes), generated once per session per size.
    Shared: copy it (shutil.copytree) before writing into it."""
    from tdsk import demo

    roots, snapshots = {}, {}

    def get(train_per_class=2, val_per_class=1):
        key = (int(train_per_class), int(val_per_class))
        if key not in roots:
            spec = demo.DemoSpec(seed=5, train_per_class=key[0], val_per_class=key[1])
            roots[key] = demo.generate(spec, str(tmp_path_factory.mktemp(f"demo-{key[0]}x{key[1]}")), progress=False)
            snapshots[roots[key]] = _snapshot(roots[key])
        return roots[key]

    yield get
    _check_untouched(snapshots, "demo dataset")


@pytest.fixture(scope="session")
def demo_fit(demo_root, tmp_path_factory):
    """Factory ``demo_fit(*overrides, train_per_class=2, val_per_class=1) -> dict``: a tiny demo model
    trained by ``tdsk.engine.trainer.fit`` on ``demo_root(train_per_class, val_per_class)`` with the
    recipe ``demo_config(root, fast_overrides(*TINY_FIT, *overrides))``, trained once per session per
    distinct key. The dict: ``root`` (the data), ``run`` (the run folder), ``ckpt`` (its last
    checkpoint), ``cfg`` (the recipe as a YAML file, for ``--cfg``) and ``cfg_dict`` (a fresh copy of
    the resolved recipe on every call). Shared: copy the run folder before writing into it."""
    from helpers import fast_overrides, write_recipe
    from tdsk import demo
    from tdsk.engine.trainer import fit
    from tdsk.train import demo_config

    runs, snapshots = {}, {}

    def get(*overrides, train_per_class=2, val_per_class=1):
        recipe = tuple(fast_overrides(*TINY_FIT, *overrides))
        key = (recipe, int(train_per_class), int(val_per_class))
        if key not in runs:
            root = demo_root(train_per_class, val_per_class)
            base = tmp_path_factory.mktemp("fit")
            cfg = demo_config(root, recipe)
            res = fit(cfg, output_dir=str(base / "run"), classes=demo.CLASSES, progress=False)
            runs[key] = {"root": root, "run": str(base / "run"), "ckpt": res.last_checkpoint,
                         "cfg": write_recipe(cfg, base / "recipe.yaml"), "cfg_dict": cfg}
            snapshots[str(base)] = _snapshot(str(base))
        return dict(runs[key], cfg_dict=copy.deepcopy(runs[key]["cfg_dict"]))

    yield get
    _check_untouched(snapshots, "run folder")
