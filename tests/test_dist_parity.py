"""DiST parity with the official code (alibaba-mmai-research/DiST), read from a git-ignored copy.

Make the copy (docs/dist.md §Parity) from the repository root::

    git clone https://github.com/alibaba-mmai-research/DiST .official/dist
    pytest tests/test_dist_parity.py

Without ``.official/dist`` the tests skip. The official ``CLIP`` (models/base/clip.py) with its
``DiSTNetwork`` (models/module_zoo/branches/dist.py) is built with random weights at the B/16
shapes of the SSv2 recipe (16 frames, alpha 2, 2 pooling blocks), saved as an official
checkpoint, loaded into tdsk's DiST with :func:`tdsk.models.load_checkpoint`, and both run the
same clip in float32: logits and every trainable gradient must agree within 1e-4 relative.
The official files are loaded by path with stand-ins for the two helpers they import from the
rest of the official package (a logger and a registry; einops, imported but unused, when it is absent), so nothing else of it runs.
"""
import contextlib
import importlib.util
import os
import sys
import types
from types import SimpleNamespace as NS

import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".official", "dist")
CLIP_PY = os.path.join(ROOT, "models", "base", "clip.py")
DIST_PY = os.path.join(ROOT, "models", "module_zoo", "branches", "dist.py")

pytestmark = pytest.mark.skipif(not (os.path.isfile(CLIP_PY) and os.path.isfile(DIST_PY)),
                                reason="official DiST code not found: git clone "
                                       "https://github.com/alibaba-mmai-research/DiST .official/dist")

NAMES = ["pushing something from left to right", "pulling something", "tearing paper", "waving", "opening a door"]
T, ALPHA, POOL = 16, 2, 2


@contextlib.contextmanager
def _official_clip_module():
    """models.base.clip from the official files, with stand-in ``utils.logging``/``utils.registry``
    (the official classes import from ``models.*`` while they are built: keep the context open)."""
    pytest.importorskip("timm")
    saved = {k: sys.modules.get(k) for k in ("einops", "utils", "utils.logging", "utils.registry", "models", "models.base",
                                              "models.base.clip", "models.module_zoo", "models.module_zoo.branches",
                                              "models.module_zoo.branches.dist")}
    try:
        import logging

        utils = types.ModuleType("utils")
        ulog = types.ModuleType("utils.logging")
        ulog.get_logger = logging.getLogger

        class Registry:
            def __init__(self, name=""):
                self._map = {}

            def register(self):
                def deco(obj):
                    self._map[obj.__name__] = obj
                    return obj
                return deco

            def get(self, name):
                return self._map[name]

        ureg = types.ModuleType("utils.registry")
        ureg.Registry = Registry
        sys.modules.update({"utils": utils, "utils.logging": ulog, "utils.registry": ureg})
        if importlib.util.find_spec("einops") is None:  # imported by dist.py, never called
            sys.modules["einops"] = types.SimpleNamespace(rearrange=None, repeat=None)
        for pkg in ("models", "models.base", "models.module_zoo", "models.module_zoo.branches"):
            mod = types.ModuleType(pkg)
            mod.__path__ = []
            sys.modules[pkg] = mod

        def load(name, path):
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            return mod

        clip = load("models.base.clip", CLIP_PY)
        load("models.module_zoo.branches.dist", DIST_PY)
        yield clip
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _official_cfg():
    dist = NS(INTEGRATION_DIM=384, TEMPORAL_DIM=96, TEMPORAL_KERNEL_SIZE=3, INTEGRATION_MLP_RATIO=1,
              INTEGRATION_TEMPORAL_MLP_RATIO=0.25, TEMPORAL_CONV_MLP_RATIO=1, S_PATCH_SIZE=16, T_PATCH_SIZE=5,
              ADA_POOLING_LAYERS=POOL, SELECTED_LAYERS=list(range(12)))
    return NS(DATA=NS(NUM_INPUT_FRAMES=T, SPARSE_SAMPLE_ALPHA=ALPHA),
              VIDEO=NS(BACKBONE=NS(FREEZE_TEXT=True, FREEZE_VISUAL=True, RECORD_VIS_MID_FEAT=True,
                                   META_ARCH_NAME="", ATTEN_BLOCK="ResidualAttentionBlockMid", DIST=dist),
                       HEAD=NS(NUM_CLASSES=len(NAMES))),
              TEST=NS(), TRAIN=NS(HALF_PRECISION=False))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(official CLIP+DiST, tdsk DiST loaded from its official checkpoint, tokens)."""
    import open_clip

    from tdsk.models import build_model, load_checkpoint

    torch.manual_seed(0)
    with _official_clip_module() as clip:
        official = clip.CLIP(_official_cfg(), 512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)
    official.prediction_fusion_enable = False
    with torch.no_grad():  # random everything, biases and norms included (the init zeroes many)
        g = torch.Generator().manual_seed(1)
        for name, p in official.named_parameters():
            if name != "logit_scale":
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    official.eval()
    sd = official.state_dict()
    folder = tmp_path_factory.mktemp("dist_official")
    ckpt = os.path.join(folder, "official.pyth")
    torch.save({"epoch": 1, "model_state": {"backbone.base_encoder." + k: v for k, v in sd.items()}}, ckpt)
    clip_file = os.path.join(folder, "clip.pt")  # the CLIP the official model started from
    torch.save({k: v for k, v in sd.items() if not k.startswith("dist_net.")}, clip_file)
    ours = build_model({"variant": "dist", "arch": "ViT-B-16", "clip_pretrained": clip_file, "num_classes": len(NAMES),
                        "num_segments": T, "alpha": ALPHA, "pooling_layers": POOL}, class_names=NAMES)
    report = load_checkpoint(ours, ckpt)
    assert report.format == "official"
    ours.eval()
    return official, ours, open_clip.tokenize(NAMES), ckpt


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_logits_and_gradients_match_the_official_model(pair):
    official, ours, tokens, _ = pair
    torch.manual_seed(2)
    video = torch.randn(1, T, 1, 3, 224, 224)
    w = torch.randn(1, len(NAMES))
    theirs = official(video[:, :, 0].reshape(T, 3, 224, 224), tokens)["logits_per_image"]
    (theirs * w).sum().backward()
    mine = ours(video)
    (mine * w).sum().backward()
    assert mine.shape == theirs.shape == (1, len(NAMES))
    rel_logits = _rel(mine.detach(), theirs.detach())
    theirs_grads = {n: p.grad for n, p in official.named_parameters() if n.startswith("dist_net.") and p.grad is not None}
    mine_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(mine_grads) == set(theirs_grads)  # the last integration->temporal bridge: no gradient in both
    rel_grads = max(_rel(mine_grads[n], theirs_grads[n]) for n in theirs_grads)
    print(f"DiST B/16 parity: max rel. difference logits {rel_logits:.2e}, gradients {rel_grads:.2e}")
    assert rel_logits < 1e-4
    assert rel_grads < 1e-4


def test_export_official_gives_back_the_official_state_dict(pair, tmp_path):
    from tdsk.models import export_official

    official, ours, _, _ = pair
    out = tmp_path / "exported.pyth"
    export_official(ours, str(out))
    sd = torch.load(out, weights_only=True)["model_state"]
    want = {"backbone.base_encoder." + k: v for k, v in official.state_dict().items()}
    assert set(sd) == set(want)
    for k, v in want.items():
        assert torch.equal(sd[k], v), k
