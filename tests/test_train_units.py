"""Training building blocks without a model or data: recipes and overrides, the
missing-data error, the LR schedule, optimizer groups, atomic checkpoints, RNG state."""
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from tdsk import config as tc
from tdsk.engine import checkpoint as C
from tdsk.engine.optim import WarmupCosine, build_criterion, build_optimizer, param_groups

RECIPES = ["ssv1_b16", "ssv1_l14", "ssv2_b16", "ssv2_l14", "k400_b16", "k400_l14", "demo"]


# ----------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_with_all_sections(name):
    cfg = tc.load_config(name)
    for section in ("model", "solver", "train", "eval", "output"):
        assert isinstance(cfg.get(section), dict), f"{name}: no {section}: section"
    assert cfg["_meta"]["name"] == name


@pytest.mark.parametrize("name,epochs,lr,skip", [
    ("ssv1_b16", 40, 1e-3, list(range(1, 20))), ("ssv1_l14", 30, 1e-4, []),
    ("ssv2_b16", 30, 1e-3, list(range(1, 10))), ("ssv2_l14", 30, 1e-4, list(range(1, 21))),
    ("k400_b16", 30, 1e-3, list(range(1, 21))), ("k400_l14", 30, 1e-4, list(range(1, 21))),
])
def test_official_hyper_parameters(name, epochs, lr, skip):
    cfg = tc.load_config(name)
    s, t = cfg["solver"], cfg["train"]
    assert (s["epochs"], s["lr"], cfg["eval"]["skip_epochs"]) == (epochs, lr, skip)
    assert s["weight_decay"] == 0.15 and s["betas"] == [0.9, 0.999] and s["eps"] == 1e-8
    assert s["warmup_epochs"] == 4 and s["schedule"] == "cosine" and s["lr_step_every"] == 10
    assert s["label_smoothing"] == 0.1 and s["grad_accumulation"] == 1 and s["grad_clip"] is None
    assert t["batch_size"] == 16 and t["seed"] == 1024 and t["sync_bn"] is False
    assert cfg["eval"]["views"] == ([3, 4] if name.startswith("k400") else [3, 2])


def test_load_by_path_and_overrides_are_yaml_typed(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {arch: x}\nsolver: {lr: 0.1, epochs: 3, betas: [0.9, 0.99]}\ntrain: {precision: auto}\n")
    cfg = tc.load_config(str(path), ["solver.lr=1e-3", "solver.epochs=7", "train.precision=fp32",
                                     "solver.betas=[0.8, 0.9]", "model.clip_pretrained=null",
                                     "train.compile=yes"])
    assert cfg["solver"]["lr"] == pytest.approx(1e-3) and isinstance(cfg["solver"]["lr"], float)
    assert cfg["solver"]["epochs"] == 7 and cfg["train"]["precision"] == "fp32"
    assert cfg["solver"]["betas"] == [0.8, 0.9] and cfg["model"]["clip_pretrained"] is None
    assert cfg["train"]["compile"] is True  # YAML 1.1: yes is a bool
    assert cfg["_meta"]["name"] == "mine"
    # the schema is the whole truth: a key it does not know cannot be added, even with '+'
    with pytest.raises(tc.ConfigError, match="unknown config key 'train.extra'"):
        tc.load_config(str(path), ["+train.extra=yes"])


@pytest.mark.parametrize("override,expected", [
    ("solver.lrr=1", "solver.lr"),
    ("train.lr=1", "solver.lr"),
    ("sovler.epochs=1", "solver.epochs"),
    ("epochs=1", "solver.epochs"),
    ("model.side_dm=64", "model.side_dim"),
])
def test_unknown_override_names_the_closest_keys(override, expected):
    with pytest.raises(tc.ConfigError) as err:
        tc.load_config("ssv1_b16", [override])
    msg = str(err.value)
    assert "unknown config key" in msg and expected in msg


def test_malformed_override_and_unknown_recipe():
    with pytest.raises(tc.ConfigError, match="key=value"):
        tc.load_config("ssv1_b16", ["solver.epochs"])
    with pytest.raises(tc.ConfigError, match="ssv1_b16"):
        tc.load_config("ssv1_b61")


def test_missing_data_cli_error_is_fast_and_explains_layout(tmp_path):
    """`python -m tdsk.train --cfg ssv1_b16` without the dataset: a clear error in < 5 s."""
    import resource

    missing = tmp_path / "nowhere"
    start = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tdsk.train", "--cfg", "ssv1_b16", f"data.root={missing}",
                           f"data.train_list={missing}/train.txt"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    elapsed = time.time() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "dataset not found" in err and str(missing) in err
    assert "Expected layout" in err and "list file lines" in err and "data.root=" in err
    assert "Traceback" not in err
    # CPU time, not wall time: on a busy shared 2-core CI machine the wall clock of the
    # interpreter start (mostly `import torch`) varies 2-3x. Nothing heavier than that
    # import runs before the error (no model, no loader, no workers).
    assert cpu < 5.0, f"took {cpu:.1f} s of CPU ({elapsed:.1f} s wall)"
    assert elapsed < 30.0


def test_check_data_paths_accepts_existing_layout(tmp_path):
    (tmp_path / "train.txt").write_text("a 1\n")
    (tmp_path / "val.txt").write_text("b 2\n")
    cfg = {"data": {"root": str(tmp_path), "train_list": "train.txt", "val_list": str(tmp_path / "val.txt")}}
    tc.check_data_paths(cfg)  # relative to root, and absolute
    with pytest.raises(tc.DataNotFoundError, match="val_list"):
        tc.check_data_paths({"data": {**cfg["data"], "val_list": "nope.txt"}})


# ----------------------------------------------------------------------------- optimisation

class Toy(nn.Module):
    """Official-like names: frozen ``visual.conv1``, side BN, side linear, ``fc`` head."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.conv1 = nn.Linear(4, 4)
        self.visual.side_pre_bn3d = nn.BatchNorm1d(4)
        self.visual.side_linear = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 3)
        self.visual.conv1.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.visual.side_linear(self.visual.side_pre_bn3d(self.visual.conv1(x))))


def test_param_groups_official_split_and_frozen_excluded():
    model = Toy()
    groups = {g["name"]: g for g in param_groups(model, {"lr": 1e-3, "weight_decay": 0.15, "clip_ratio": 0.5})}
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(groups["bn"]) == {id(p) for p in model.visual.side_pre_bn3d.parameters()}
    assert ids(groups["clip"]) == {id(p) for p in model.visual.side_linear.parameters()}
    assert ids(groups["other"]) == {id(p) for p in model.fc.parameters()}
    assert all(g["weight_decay"] == 0.15 for g in groups.values())  # nothing exempt
    assert groups["clip"]["lr"] == pytest.approx(5e-4) and groups["bn"]["lr"] == pytest.approx(1e-3)
    frozen = {id(p) for p in model.visual.conv1.parameters()}
    opt = build_optimizer(model, {"lr": 1e-3, "weight_decay": 0.15})
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_param_groups_on_the_tdsk_model():
    """tdsk's own module names: bn = the side network's BatchNorms, clip = the rest of the
    side network (lr x clip_ratio), other = the head; the frozen CLIP tower is in none."""
    import types

    from tdsk.models import build_model, official_key_map

    torch.manual_seed(0)
    model = build_model("tiny", clip_pretrained=None)
    solver = {"lr": 1e-3, "weight_decay": 0.15, "clip_ratio": 0.1}
    groups = {g["name"]: g for g in param_groups(model, solver)}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    side_bn = {id(p) for m in model.side.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for p in m.parameters(recurse=False)}
    # tiny: SME rgb_bn/diff_bn, post_bn, and per block bn_1, bn_2 + the TD-Adapter's bn1, bn2
    assert len(side_bn) == 2 * (3 + 4 * len(model.side.blocks))
    assert set(groups) == {"bn", "clip", "other"}
    assert ids(groups["bn"]["params"]) == side_bn
    assert ids(groups["clip"]["params"]) == ids(model.side.parameters()) - side_bn
    assert ids(groups["other"]["params"]) == ids(model.head.parameters())
    # every trainable parameter exactly once, no frozen one
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert len(listed) == len(set(listed)) and set(listed) == ids(model.trainable_parameters())
    assert not set(listed) & ids(model.encoder.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    lrs = {n: (g["lr"], g["lr_scale"], g["weight_decay"]) for n, g in groups.items()}
    assert lrs == {"bn": (pytest.approx(1e-3), 1.0, 0.15), "clip": (pytest.approx(1e-4), pytest.approx(0.1), 0.15),
                   "other": (pytest.approx(1e-3), 1.0, 0.15)}
    # the split is the official one: under the official names (the rule was written for
    # them) the same parameters land in the same groups
    mapping = official_key_map(model)
    renamed = types.SimpleNamespace(named_parameters=lambda: [(mapping[n], p) for n, p in model.named_parameters()])
    official = {g["name"]: ids(g["params"]) for g in param_groups(renamed, solver)}
    assert official == {n: ids(g["params"]) for n, g in groups.items()}
    # the mean-pool baseline trains only its head
    torch.manual_seed(0)
    baseline = build_model("tiny", clip_pretrained=None, variant="baseline")
    (only,) = param_groups(baseline, solver)
    assert only["name"] == "other" and ids(only["params"]) == ids(baseline.head.parameters())


def test_schedule_matches_the_official_stepping():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, base_lr=1e-3, epochs=30, warmup_epochs=4, step_every=10)
    n = 100  # iterations per epoch
    lrs = []
    for epoch in range(30):
        for i in range(n):
            if sched.should_step(i):
                sched.step(epoch + i / n)
            lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:9] == [0.0] * 9  # iterations 0-8 of epoch 0 run at lr 0
    assert lrs[9] == pytest.approx(1e-3 * (9 / 100) / 4)
    assert len(set(lrs[9:19])) == 1  # constant over blocks of 10
    assert lrs[4 * n] == pytest.approx(1e-3)  # end of warmup
    e = 17 + 39 / 100  # cosine at a step point
    assert lrs[17 * n + 39] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (e - 4) / 26)))
    assert lrs[-1] < 1e-6 and min(lrs) >= 0
    # the state is just the last fractional epoch
    sched2 = WarmupCosine(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0), 1e-3, 30, 4, step_every=10)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.lr == sched.lr


def test_label_smoothing_equals_timm_formula():
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = build_criterion({"label_smoothing": 0.1})(logits, target)
    logp = logits.log_softmax(-1)
    timm = (0.9 * -logp.gather(1, target[:, None]).squeeze(1) + 0.1 * -logp.mean(-1)).mean()
    torch.testing.assert_close(loss, timm)


# ----------------------------------------------------------------------------- checkpoints

def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "epoch_0001.pt"
    C.atomic_save({"format": C.FORMAT, "x": torch.arange(3)}, str(path))
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save({"partial": torch.zeros(10)}, f)
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        C.atomic_save({"format": C.FORMAT, "x": torch.arange(5)}, str(path))
    monkeypatch.undo()
    assert torch.equal(C.load(str(path))["x"], torch.arange(3))  # the old file, intact
    assert os.listdir(tmp_path) == ["epoch_0001.pt"]  # no temporary left behind


def test_find_resume_skips_unreadable_and_prune_keeps_last(tmp_path):
    from tdsk.engine import rundir as R

    man = R.Manifest(str(tmp_path), "run1")
    for e in (1, 2, 3):
        C.atomic_save({"format": C.FORMAT, "epoch": e}, str(tmp_path / C.EPOCH_PATTERN.format(e)))
        man.add(str(tmp_path / C.EPOCH_PATTERN.format(e)))
    (tmp_path / C.EPOCH_PATTERN.format(4)).write_bytes(b"garbage")
    path, ckpt, skipped = R.find_resume(str(tmp_path))
    assert path.endswith("epoch_0003.pt") and ckpt["epoch"] == 3
    assert [os.path.basename(p) for p, _ in skipped] == ["epoch_0004.pt"] and "unreadable" in skipped[0][1]
    man.prune(2, newest=path)
    # epoch_0004.pt was not written by this run line: never pruned
    assert [e for e, _ in C.epoch_checkpoints(str(tmp_path))] == [2, 3, 4]


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    state = C.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    C.atomic_save({"rng": state}, str(tmp_path / "r.pt"))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    C.set_rng_state(C.load(str(tmp_path / "r.pt"))["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_trainable_state_and_frozen_identity(tmp_path):
    model = Toy()
    state = C.trainable_state_dict(model)
    assert "visual.conv1.weight" not in state and "visual.side_pre_bn3d.running_mean" in state
    ident = C.frozen_identity(model, None)
    assert ident["weights_included"] and len(ident["weights_sha256"]) == 64
    weights = tmp_path / "clip.pt"
    torch.save(model.visual.conv1.state_dict(), weights)
    ident = C.frozen_identity(model, str(weights))
    assert not ident["weights_included"] and ident["file_sha256"] == C.file_sha256(str(weights))
    # loading into a model whose frozen tower differs is refused
    other = Toy()
    with pytest.raises(RuntimeError, match="frozen CLIP weights differ"):
        C.load_model_state(other, {"model_state_dict": state, "frozen": ident})
    other.visual.conv1.load_state_dict(model.visual.conv1.state_dict())
    C.load_model_state(other, {"model_state_dict": state, "frozen": ident})
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_data_and_model_sections_must_agree():
    from tdsk.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.num_segments=4 but model.num_segments=8"):
        load_config("ssv1_b16", ["data.num_segments=4"])
    cfg = load_config("ssv1_b16", ["data.num_segments=16", "model.num_segments=16"])
    assert cfg["data"]["num_segments"] == cfg["model"]["num_segments"] == 16
