"""The model families side by side on one engine (``pytest bench/bench_families.py --benchmark-only -s``).

Each family at its official B/16 clip (224 px, one clip): TDS-CLIP ``ssv1_b16`` (8 segments x 5
local frames, CLIP on the 8 centre frames), DiST ``ssv2_dist_b16`` (16 frames, CLIP on 8),
M2-CLIP ``k400_m2clip_b16`` (8 frames, adapters inside CLIP: back-propagation runs through the
frozen tower), MSTA ``k400_msta_b16`` (8 frames, adapters inside both towers). Random weights
(``clip_pretrained=None``), fp32, this machine's threads, 174 classes; ``m2clip_ckpt`` is M2-CLIP
with activation checkpointing in the frozen towers (``model.checkpoint: true``). Rows:

* ``train_step``: one forward + backward of one clip with the family's training loss (timed); ``saved_mib``: bytes autograd
  keeps for that backward (unique storages, as in bench_model.py); ``trainable``: parameters
  the optimiser sees; ``gflops``: one view, ``torch.utils.flop_counter``, eval forward with the class texts cached;
* ``infer``: one eval forward without autograd (timed);
* ``official_dist_infer``: the official DiST modules (CLIP + DiSTNetwork from the git-ignored
  ``.official/dist``, tests/test_dist_parity.py) on the same input, eager (skipped without them).

At the end every family's rows and their ratio to TDS-CLIP's, measured in this run, are printed. The GPU
device run picks the same cases up (``FAMILY_CASES``). Nothing asserts a timing.
"""
import os

import pytest
import torch

from tdsk.models import build_model
from tdsk.models.registry import loss_of

FAMILY_CASES = {"tds_clip": ("ssv1_b16", (1, 8, 5, 3, 224, 224)), "dist": ("ssv2_dist_b16", (1, 16, 1, 3, 224, 224)),
                "m2clip": ("k400_m2clip_b16", (1, 8, 1, 3, 224, 224)),
                "m2clip_ckpt": ("k400_m2clip_b16", (1, 8, 1, 3, 224, 224), {"checkpoint": True}),
                "msta": ("k400_msta_b16", (1, 8, 1, 3, 224, 224), {"descriptions": "DESCRIPTIONS"})}
NAMES = [f"class {i}" for i in range(174)]
MIB = 2 ** 20
_RESULTS = {}


def _descriptions():
    """Two made-up sentences per class (MSTA's consistency term needs a descriptions file)."""
    import json
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "tdsk_bench_descriptions.json")
    with open(path, "w") as f:
        json.dump({n: [f"a video showing {n}.", f"someone doing {n}."] for n in NAMES}, f)
    return path


def _build(family):
    # every family gets the class names (the text classifiers need them, the others ignore them)
    case = FAMILY_CASES[family]
    extra = {k: (_descriptions() if v == "DESCRIPTIONS" else v) for k, v in (case[2] if len(case) > 2 else {}).items()}
    return build_model(case[0], class_names=NAMES, clip_pretrained=None, num_classes=174, **extra)


def _model(family, device="cpu"):
    torch.manual_seed(0)
    return _build(family).to(device)


def _flops(family):
    """GFLOPs of one eval forward, counted by ``torch.utils.flop_counter`` on the CPU model. The
    count is of a second forward: the text classifiers compute their class texts once (cached),
    so the first forward would count the text tower over all 174 class prompts too."""
    from torch.utils.flop_counter import FlopCounterMode

    m = _model(family).eval()
    video = torch.randn(FAMILY_CASES[family][1])
    with torch.no_grad():
        m(video)
        with FlopCounterMode(display=False) as counter:
            m(video)
    return counter.get_total_flops() / 1e9


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    base = _RESULTS.get("tds_clip")
    if base:
        print("\nfamilies, B/16 one clip, fp32, this machine (value, and ratio to TDS-CLIP, measured in this run):")
        for family, rows in _RESULTS.items():
            for key in sorted(set(rows) & set(base)):
                print(f"  {family:9s} {key:22s} {rows[key]:12.4g}   / TDS-CLIP {rows[key] / base[key]:.3f}")


@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_train_step(benchmark, family):
    model = _model(family).train()
    video = torch.randn(FAMILY_CASES[family][1])
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    target, criterion = torch.zeros(1, dtype=torch.long), torch.nn.CrossEntropyLoss()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, model(video), target, criterion)  # the family's training loss
    del loss

    def step():
        loss_of(model, model(video), target, criterion).backward()
        model.zero_grad(set_to_none=True)

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    info = {"saved_mib": sum(storages.values()) / MIB, "trainable": sum(p.numel() for p in model.parameters()
                                                                       if p.requires_grad),
            "gflops_per_view": _flops(family), "train_step_s": benchmark.stats.stats.median}
    benchmark.extra_info.update(family=family, **info)
    _RESULTS.setdefault(family, {}).update(info)


@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_infer(benchmark, family):
    model = _model(family).eval()
    video = torch.randn(FAMILY_CASES[family][1])

    def forward():
        with torch.no_grad():
            return model(video)

    benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(family=family, infer_s=benchmark.stats.stats.median)
    _RESULTS.setdefault(family, {})["infer_s"] = benchmark.stats.stats.median


def test_official_dist_infer(benchmark):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    try:
        import test_dist_parity as P
    finally:
        sys.path.pop(0)
    if not os.path.isfile(P.CLIP_PY):
        pytest.skip("official DiST code not found (.official/dist; see tests/test_dist_parity.py)")
    import open_clip

    torch.manual_seed(0)
    with P._official_clip_module() as clip:
        official = clip.CLIP(P._official_cfg(), 512, 224, 12, 768, 16, 77, 49408, 512, 8, 12).eval()
    official.prediction_fusion_enable = False
    tokens = open_clip.tokenize(P.NAMES)
    video = torch.randn(16, 3, 224, 224)

    def forward():
        with torch.no_grad():
            return official(video, tokens)["logits_per_image"]

    benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(family="dist_official", infer_s=benchmark.stats.stats.median)
    ours = _RESULTS.get("dist", {}).get("infer_s")
    if ours:
        print(f"\nofficial DiST eager inference {benchmark.stats.stats.median:.3f} s vs tdsk DiST {ours:.3f} s "
              f"(tdsk / official {ours / benchmark.stats.stats.median:.3f}; the official run includes its 5-class "
              "text encoding each call)")
