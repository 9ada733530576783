"""The edges of long runs: resume never silently restarts or deletes what it did not
write, mid-epoch checkpoints and SIGTERM, recipe changes on resume, one run per
directory, no scored or kept non-finite numbers, true evaluation counts, and every
recipe value checked with its key named. CPU, demo-sized settings."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from helpers import assert_bit_identical, fast_overrides, run_tool, tool_env, write_recipe
from tdsk import demo
from tdsk.config import ConfigError, load_config
from tdsk.engine import checkpoint as C
from tdsk.engine import rundir as R
from tdsk.engine.evaluation import score
from tdsk.engine.metrics import read_metrics
from tdsk.engine.trainer import NonFiniteLossError, build_model, fit
from tdsk.train import demo_config

FAST = fast_overrides("output.keep_last=10", "train.log_every=2", "output.plot=false")


@pytest.fixture(scope="module")
def root(demo_root):
    return demo_root(train_per_class=4, val_per_class=1)  # 36 train videos: 6 iterations/epoch


def _cfg(root, *extra):
    return demo_config(root, FAST + list(extra))


def _fit(root, out, *extra, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("loader_factory", demo.MemoryClipLoader)
    return fit(_cfg(root, *extra), output_dir=str(out), **kw)


class _Crash(RuntimeError):
    pass


def _hook_forward(model, fn):
    """Wrap ``model.forward`` (instance attribute: the state dict keys stay the same)."""
    orig = model.forward
    calls = {"train": 0}

    def forward(video):
        if model.training:
            calls["train"] += 1
        return fn(orig(video), calls["train"], model.training)

    model.forward = forward
    return model


# ----------------------------------------------------------------------------- 2. resume

def test_resume_auto_skips_unreadable_newest_and_never_deletes_foreign_files(root, tmp_path):
    args = ("solver.epochs=3", "eval.validate=false", "output.keep_last=1")
    _fit(root, tmp_path, *args)
    assert [e for e, _ in C.epoch_checkpoints(str(tmp_path))] == [3]
    # a newer, truncated checkpoint of this run, a foreign garbage file numbered higher,
    # and the temporary file of a killed write
    good = (tmp_path / "epoch_0003.pt").read_bytes()
    (tmp_path / "epoch_0003.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "epoch_0002.pt").write_bytes(good)  # an older readable one: resume must pick it
    (tmp_path / "epoch_0009.pt").write_bytes(b"not a checkpoint")
    (tmp_path / ".epoch_0004.pt.tmp4242").write_bytes(b"torn")
    lines_before = (tmp_path / "metrics.jsonl").read_text().splitlines()
    res = _fit(root, tmp_path, *args, resume="auto")
    assert not (tmp_path / ".epoch_0004.pt.tmp4242").exists()  # removed at start
    assert (tmp_path / "epoch_0009.pt").read_bytes() == b"not a checkpoint"  # not this run's: kept
    assert C.load(res.last_checkpoint)["epoch"] == 3  # epoch 3 trained again from epoch_0002.pt
    lines_after = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines_after[: len(lines_before)] == lines_before  # appended to, never rewritten
    marker = [json.loads(x) for x in lines_after[len(lines_before):] if '"resume"' in x][0]
    assert marker["checkpoint"].endswith("epoch_0003.pt") is False and marker["checkpoint"].endswith("epoch_0002.pt")


def test_resume_auto_with_nothing_readable_stops_and_changes_nothing(root, tmp_path):
    _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false")
    (tmp_path / "epoch_0001.pt").write_bytes(b"truncated")
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path) if (tmp_path / p).is_file()}
    with pytest.raises(R.RunDirError, match=r"none is readable[\s\S]*epoch_0001.pt[\s\S]*--overwrite"):
        _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false", resume="auto")
    after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path) if (tmp_path / p).is_file()}
    assert before == after


def test_mid_epoch_checkpoint_resume_is_bit_identical(root, tmp_path):
    common = ("solver.epochs=2", "eval.validate=false", "output.checkpoint_every=4")
    straight = _fit(root, tmp_path / "straight", *common)
    # the same run, crashing right after its mid-epoch checkpoint at global step 8 (epoch 2, iteration 2)
    model = build_model(_cfg(root, *common))

    def crash(out, calls, training):
        if training and calls == 9:
            raise _Crash("preempted")
        return out

    with pytest.raises(_Crash):
        _fit(root, tmp_path / "killed", *common, model=_hook_forward(model, crash))
    names = sorted(os.listdir(tmp_path / "killed"))
    assert "epoch_0001_iter_000002.pt" in names and "epoch_0002.pt" not in names
    assert "epoch_0000_iter_000004.pt" not in names  # older mid-epoch checkpoints are pruned
    mid = C.load(str(tmp_path / "killed" / "epoch_0001_iter_000002.pt"))
    assert mid["epoch"] == 1 and mid["step"] == 8 and mid["epoch_progress"]["iteration"] == 2
    resumed = _fit(root, tmp_path / "killed", *common, resume="auto")
    assert resumed.last_checkpoint.endswith("epoch_0002.pt")
    assert_bit_identical(C.load(straight.last_checkpoint), C.load(resumed.last_checkpoint))


def test_sigterm_writes_a_checkpoint_and_exits_with_one_line(root, tmp_path):
    cfg_path = write_recipe(_cfg(root, "solver.epochs=8", "eval.validate=false"), tmp_path / "cfg.yaml")
    out = tmp_path / "out"
    args = ["--cfg", cfg_path, "--output", str(out), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "tdsk.train", *args], env=tool_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "epoch_0001.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("stopped by SIGTERM")]
    assert len(line) == 1 and "--resume auto" in line[0]
    path = line[0].split("checkpoint ", 1)[1].split(";")[0]
    assert os.path.isfile(path) and C.load(path)["epoch"] >= 1
    done = run_tool("tdsk.train", *args, "--resume", "auto", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert C.load(str(out / "epoch_0008.pt"))["epoch"] == 8


def test_resume_with_a_changed_recipe_is_refused_unless_forced(root, tmp_path):
    _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1")
    (tmp_path / "epoch_0002.pt").unlink()  # as if killed during epoch 2
    with pytest.raises(ConfigError, match=r"solver\.lr: 0\.003 -> 0\.01[\s\S]*train\.batch_size[\s\S]*--resume-force"):
        _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1",
             "solver.lr=0.01", "train.batch_size=4", resume="auto")
    # harmless changes (logging, workers, evaluation) are allowed
    res = _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1",
               "train.log_every=1", "eval.batch_size=3", resume="auto")
    assert res.last_checkpoint.endswith("epoch_0002.pt")
    (tmp_path / "epoch_0002.pt").unlink()
    res = _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1",
               "solver.lr=0.01", resume="auto", resume_force=True)
    assert res.last_checkpoint.endswith("epoch_0002.pt")


def test_variant_override_is_stored_and_old_baseline_checkpoints_still_load(root, tmp_path):
    """fit(variant="baseline") stores model.variant=baseline; a checkpoint written before that
    (its recipe still says tds_clip) reloads as the baseline and resumes with --variant baseline."""
    from tdsk.inference import Recognizer
    from tdsk.models.baseline import MeanPoolCLIP

    args = ("solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1")
    _fit(root, tmp_path, *args, variant="baseline")
    path = tmp_path / "epoch_0001.pt"
    ckpt = C.load(str(path))
    assert ckpt["config"]["model"]["variant"] == "baseline"
    ckpt["config"]["model"]["variant"] = "tds_clip"                # as written before the variant was stored
    torch.save(ckpt, str(path))
    (tmp_path / "epoch_0002.pt").unlink()
    assert isinstance(Recognizer.from_pretrained(str(path), device="cpu").model, MeanPoolCLIP)
    res = _fit(root, tmp_path, *args, variant="baseline", resume="auto")
    assert res.last_checkpoint.endswith("epoch_0002.pt")
    assert C.stored_recipe(C.load(res.last_checkpoint))["model"]["variant"] == "baseline"


def test_fresh_start_over_an_earlier_run_needs_overwrite(root, tmp_path):
    _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false", "train.limit_train_batches=1")
    with pytest.raises(R.RunDirError, match="--resume auto"):
        _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false", "train.limit_train_batches=1")
    (tmp_path / "epoch_0001.pt").unlink()  # only the metrics of a run killed in its first epoch remain
    with pytest.raises(R.RunDirError, match="metrics.jsonl"):
        _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false", "train.limit_train_batches=1")


# ----------------------------------------------------------------------------- 3. lock

def test_second_run_into_the_same_directory_is_refused_naming_the_holder(root, tmp_path):
    lock = R.RunLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(R.RunDirError, match=rf"in use by another training run \(host \S+, PID {os.getpid()}"):
            _fit(root, tmp_path, "solver.epochs=1", "train.limit_train_batches=1")
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        lock.release()


def test_two_trainings_started_together_one_refuses(root, tmp_path):
    # the first run is long: it must still be training when the second one starts
    cfg_path = write_recipe(_cfg(root, "solver.epochs=200", "eval.validate=false"), tmp_path / "cfg.yaml")
    args = ["--cfg", cfg_path, "--output", str(tmp_path / "out"), "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "tdsk.train", *args], env=tool_env(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out" / R.LOCK_NAME).exists() or not (tmp_path / "out" / R.LOCK_NAME).read_text():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.02)
    second = run_tool("tdsk.train", *args, timeout=120)
    still_running = first.poll() is None
    first.send_signal(signal.SIGTERM)  # it stops at its next step, with a checkpoint
    first.communicate(timeout=240)
    assert still_running, "the first run ended before the second started: the test proves nothing"
    assert first.returncode == 128 + signal.SIGTERM
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr


def test_lock_left_by_a_dead_process_is_taken_over(root, tmp_path):
    code = textwrap.dedent(f"""
        import os
        from tdsk.engine.rundir import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        os._exit(0)  # dies holding the lock, without releasing it
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=tool_env())
    assert json.loads((tmp_path / R.LOCK_NAME).read_text())["pid"] != os.getpid()
    res = _fit(root, tmp_path, "solver.epochs=1", "eval.validate=false", "train.limit_train_batches=1")
    assert res.last_checkpoint.endswith("epoch_0001.pt")
    assert (tmp_path / R.LOCK_NAME).read_text() == ""  # released at the end


# ----------------------------------------------------------------------------- 4. non-finite

def test_nan_outputs_are_never_a_prediction():
    probs = np.full((3, 4), np.nan)
    probs[2] = [0.1, 0.1, 0.7, 0.1]
    res = score(probs, np.array([0, 0, 2]))
    assert res.top1 == pytest.approx(1 / 3) and res.top5 == pytest.approx(1 / 3)  # NaN rows are not class 0
    assert res.num_nonfinite == 2 and not res.is_finite
    assert res.confusion().sum() == 1 and res.videos_per_class().tolist() == [2, 0, 1, 0]
    json.dumps(res.summary(), allow_nan=False)
    nan_all = score(np.full((2, 3), np.nan), np.array([0, 1]))
    assert nan_all.top1 == 0.0 and nan_all.summary()["loss"] is None


def test_best_is_never_chosen_from_a_non_finite_validation(root, tmp_path):
    cfg = _cfg(root, "solver.epochs=1", "train.limit_train_batches=1")
    model = _hook_forward(build_model(cfg), lambda out, calls, training: out if training else out * float("nan"))
    res = _fit(root, tmp_path, "solver.epochs=1", "train.limit_train_batches=1", model=model)
    assert res.val.num_nonfinite == res.val.count > 0 and res.val.top1 == 0.0
    assert not (tmp_path / C.BEST_NAME).exists() and res.best_checkpoint is None
    val = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["kind"] == "val"]
    assert val and val[-1]["eligible"] is False


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def test_nan_gradient_at_the_last_step_of_an_epoch_saves_nothing(root, tmp_path):
    cfg = _cfg(root, "solver.epochs=2")

    def nan_grad(out, calls, training):
        return _NaNGrad.apply(out) if training and calls == 6 else out  # the last step of epoch 1

    model = _hook_forward(build_model(cfg), nan_grad)
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at epoch 1 iteration 6 \(global step 6\)"):
        _fit(root, tmp_path, "solver.epochs=2", model=model)
    assert C.epoch_checkpoints(str(tmp_path)) == [] and not (tmp_path / C.BEST_NAME).exists()


def test_non_finite_state_is_never_checkpointed(root, tmp_path):
    """A NaN that reaches the weights without a NaN gradient (here: a corrupted buffer) stops the run."""
    cfg = _cfg(root, "solver.epochs=1", "train.limit_train_batches=1")
    model = build_model(cfg)
    model.register_buffer("running_probe", torch.zeros(3))  # state the model keeps, outside autograd

    def poison(out, calls, training):
        if training:
            model.running_probe.fill_(float("nan"))
        return out

    with pytest.raises(NonFiniteLossError, match=r"not finite after global step 1 \(running_probe"):
        _fit(root, tmp_path, "solver.epochs=1", "train.limit_train_batches=1", model=_hook_forward(model, poison))
    assert C.epoch_checkpoints(str(tmp_path)) == []


def test_checkpoint_is_written_before_validation(root, tmp_path):
    def factory(data_cfg, split, **kw):
        loader = demo.MemoryClipLoader(data_cfg, split, **kw)
        if split == "val":
            def broken():
                raise OSError("val disk went away")
                yield  # pragma: no cover
            loader.__class__ = type("Broken", (demo.MemoryClipLoader,), {"__iter__": lambda self: broken()})
        return loader

    with pytest.raises(OSError, match="val disk went away"):
        fit(_cfg(root, "solver.epochs=1", "train.limit_train_batches=1"), output_dir=str(tmp_path), progress=False,
            loader_factory=factory)
    ckpt = C.load(str(tmp_path / "epoch_0001.pt"))
    assert ckpt["epoch"] == 1 and ckpt["validation_pending"] is True
    # resuming runs the missing validation and finishes
    res = _fit(root, tmp_path, "solver.epochs=1", "train.limit_train_batches=1", resume="auto")
    assert res.val is not None and res.val.count == 9 and res.best_checkpoint is not None


# ----------------------------------------------------------------------------- 5. counts

EVAL_WORKER = textwrap.dedent("""
    import json, sys, torch
    import tdsk.engine.distributed as D
    from tdsk import demo
    from tdsk.engine.evaluation import evaluate
    from tdsk.engine.trainer import build_model
    from tdsk.train import demo_config
    cfg = demo_config(sys.argv[1], ["model.input_size=32", "data.input_size=32", "data.resize=32"])
    info = D.init("cpu")
    model = build_model(cfg)
    loader = demo.MemoryClipLoader(cfg["data"], "val", batch_size=2, rank=info.rank, world_size=info.world_size)
    res = evaluate(model, loader, device=info.device, dist_info=info, progress=False)
    if info.is_main:
        json.dump({"count": res.count, "labels": sorted(res.labels.tolist())}, open(sys.argv[2], "w"))
    D.shutdown(info)
""")


def test_distributed_evaluation_counts_every_video_once(root, tmp_path):
    data = str(shutil.copytree(root, tmp_path / "data"))  # a copy: its val.txt is cut below
    lines = open(os.path.join(data, "val.txt")).read().split("\n")
    with open(os.path.join(data, "val.txt"), "w") as f:  # 7 videos on 2 ranks
        f.write("\n".join([x for x in lines if x][:7]) + "\n")
    worker = tmp_path / "worker.py"
    worker.write_text(EVAL_WORKER)
    proc = run_tool("torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, data,
                    tmp_path / "out.json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.load(open(tmp_path / "out.json"))
    assert out["count"] == 7  # not 8: no padding duplicate
    assert out["labels"] == sorted(int(x.split()[-1]) for x in [y for y in lines if y][:7])


def test_eval_sharding_covers_each_item_exactly_once():
    from tdsk.data.dataset import EpochSampler

    for n in (0, 1, 7, 16):
        for w in (1, 2, 3):
            got = sorted(i for r in range(w) for i in EpochSampler(n, shuffle=False, rank=r, world_size=w).indices())
            assert got == list(range(n))
    # training keeps the padded DistributedSampler partition (equal steps on every rank)
    assert {len(EpochSampler(7, shuffle=True, rank=r, world_size=2)) for r in range(2)} == {4}


# ----------------------------------------------------------------------------- 6. schema

@pytest.mark.parametrize("override,key", [
    ("solver.lr=abc", "solver.lr"),
    ("data.num_segments=4.0", "data.num_segments"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("solver.epochs=1.7", "solver.epochs"),
    ("data.std=[0,0,0]", "data.std"),
    ("data.std=[1,1]", "data.std"),
    ("eval.limit_val_batches=abc", "eval.limit_val_batches"),
    ("output.keep_last=abc", "output.keep_last"),
    ("output.checkpoint_every=0", "output.checkpoint_every"),
    ("train.precision=fp8", "train.precision"),
    ("solver.lr=-1", "solver.lr"),
])
def test_every_value_is_checked_with_its_key_named(override, key):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}"):
        load_config("demo", [override])


def test_td_layers_single_int_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.td_layers"):
        load_config("ssv1_b16", ["model.td_layers=7"])
    cfg = load_config("ssv1_b16", ["model.td_layers=[7]"])
    assert cfg["model"]["td_layers"] == [7]


@pytest.mark.parametrize("section,typo,right", [("solver", "epoch", "solver.epochs"),
                                                 ("train", "batchsize", "train.batch_size"),
                                                 ("eval", "skip_epoch", "eval.skip_epochs"),
                                                 ("output", "keeplast", "output.keep_last")])
def test_unknown_keys_in_a_recipe_file_are_errors(tmp_path, section, typo, right):
    path = tmp_path / "mine.yaml"
    path.write_text(f"_base_: demo\n{section}: {{{typo}: 1}}\n")
    with pytest.raises(ConfigError, match=rf"unknown config key '{section}\.{typo}'.*{right}"):
        load_config(str(path))


def test_recipe_inheritance(tmp_path):
    l14 = load_config("ssv1_l14")
    b16 = load_config("ssv1_b16", ["model.arch=ViT-L-14", "model.side_dim=512", "solver.lr=1e-4",
                                   "solver.epochs=30", "eval.skip_epochs=[]"])
    assert {k: v for k, v in l14.items() if k != "_meta"} == {k: v for k, v in b16.items() if k != "_meta"}
    assert load_config("k400_l14")["data"]["dataset"] == "kinetics"  # two levels: k400_l14 -> k400_b16 -> ssv1_b16
    (tmp_path / "base.yaml").write_text("_base_: demo\nsolver: {epochs: 5}\n")
    (tmp_path / "mine.yaml").write_text("_base_: base.yaml\nsolver: {lr: 0.5}\n")  # relative to this file
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg["solver"]["epochs"] == 5 and cfg["solver"]["lr"] == 0.5 and cfg["model"]["arch"] == "tdsk-ViT-Demo-8"
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(str(tmp_path / "a.yaml"))


def test_recipe_prefix_ranks_first():
    with pytest.raises(ConfigError, match=r"Did you mean: ssv1_b16, ssv1_l14"):
        load_config("ssv1")


def test_train_cli_user_errors_exit_2_without_traceback(root, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("videos/train/x.mp4 notanumber\n")
    cfg = _cfg(root, f"data.train_list={bad}", "solver.epochs=1")
    path = write_recipe(cfg, tmp_path / "cfg.yaml")
    proc = run_tool("tdsk.train", "--cfg", path, "--output", tmp_path / "o", "--no-progress", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:1" in proc.stderr


# ----------------------------------------------------------------------------- review fixes

def test_explicit_resume_refuses_later_checkpoints_of_another_timeline(root, tmp_path):
    args = ("solver.epochs=3", "eval.validate=false", "train.limit_train_batches=1")
    _fit(root, tmp_path, *args)
    first = str(tmp_path / "epoch_0001.pt")
    with pytest.raises(R.RunDirError, match=r"later checkpoints \(epoch_0002.pt, epoch_0003.pt\)"):
        _fit(root, tmp_path, *args, resume=first)
    res = _fit(root, tmp_path, *args, resume=first, overwrite=True)  # explicit: the later ones go
    assert res.last_checkpoint.endswith("epoch_0003.pt") and C.load(res.last_checkpoint)["epoch"] == 3


def test_resume_with_another_number_of_processes_is_a_recipe_change(root, tmp_path):
    _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1")
    path = tmp_path / "epoch_0001.pt"
    ckpt = C.load(str(path))
    (tmp_path / "epoch_0002.pt").unlink()
    ckpt["world_size"] = 2
    C.atomic_save(ckpt, str(path))
    with pytest.raises(ConfigError, match=r"world size \(processes\): 2 -> 1"):
        _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1", resume="auto")
    ckpt["epoch_progress"] = {"iteration": 1, "sums": [0.0, 0.0, 1.0]}
    C.atomic_save(ckpt, str(path))
    with pytest.raises(ConfigError, match="mid-epoch checkpoint of 2 process"):
        _fit(root, tmp_path, "solver.epochs=2", "eval.validate=false", "train.limit_train_batches=1", resume="auto",
             resume_force=True)


def test_init_from_keeps_the_frozen_tower_of_clip_pretrained(root, tmp_path):
    """A source holding another CLIP tower must not replace the tower that checkpoints recreate
    from model.clip_pretrained (the run would be trained on one tower and evaluated on another)."""
    from tdsk.models import export_official

    cfg = _cfg(root)
    a, b = build_model(cfg), build_model(cfg)
    torch.manual_seed(99)
    b = build_model(cfg)  # another random tower
    clip_file = tmp_path / "clip_a.pt"
    torch.save({"visual." + k: v for k, v in a.encoder.state_dict().items()}, clip_file)
    export_official(b, str(tmp_path / "source_b.pt"))
    extra = ("solver.epochs=1", "eval.validate=false", "train.limit_train_batches=1",
             f"model.clip_pretrained={clip_file}", f"train.init_from={tmp_path / 'source_b.pt'}")
    trained = build_model(_cfg(root, *extra))
    _fit(root, tmp_path / "run", *extra, model=trained)
    for k, v in a.encoder.state_dict().items():  # trained on tower A, as checkpoints will recreate it
        assert torch.equal(trained.encoder.state_dict()[k], v), k
    side = [k for k in trained.state_dict() if k.startswith("side.sme.rgb_conv")]
    assert side  # while the side network did come from the source (then trained one step)


def test_empty_section_in_a_child_recipe_keeps_the_base(tmp_path):
    path = tmp_path / "child.yaml"
    path.write_text("_base_: k400_b16\neval:\n  # nothing changed here yet\n")
    cfg = load_config(str(path))
    assert cfg["eval"]["views"] == [3, 4] and cfg["eval"]["skip_epochs"][0] == 1


def test_output_dir_placeholder_and_numeric_names():
    with pytest.raises(ConfigError, match=r"output\.dir"):
        load_config("demo", ["output.dir=runs/{name.x}"])
    assert load_config("demo", ["data.root=2024"])["data"]["root"] == 2024  # YAML int, accepted as a name
    from tdsk.schema import validate_recipe

    assert validate_recipe(load_config("demo", ["data.root=2024"])).data.root == "2024"


def test_replacement_of_a_bad_item_does_not_depend_on_the_worker_history():
    from types import SimpleNamespace

    from tdsk.data import DataConfig
    from tdsk.data.items import ItemPlanner

    records = [SimpleNamespace(path=f"v{i}.mp4", label=i, num_frames=None, line=i + 1) for i in range(6)]
    planner = ItemPlanner(records, DataConfig(), "train", seed=3, rank=0)
    fresh = [planner.replacement(planner.replacement_draw(i, 0)) for i in range(6)]
    planner.known_bad.update({0: "bad", 2: "bad", 4: "bad"})
    again = [planner.replacement(planner.replacement_draw(i, 0)) for i in range(6)]
    assert fresh == again


def test_pending_validation_resume_gives_every_rank_the_same_best(tmp_path, monkeypatch):
    """After a resume whose epoch still needs its validation, rank 0 reads the best top-1 so far
    from metrics.jsonl; the other ranks get it in the same all-reduce (they used to keep the
    checkpoint's, so each rank judged "improved" against another best)."""
    from types import SimpleNamespace

    from tdsk.engine import trainer as T

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for epoch, top1 in ((0, 0.25), (1, 0.5)):
            f.write(json.dumps({"kind": "val", "step": epoch, "epoch": epoch, "val_top1": top1, "eligible": True}) + "\n")
    sent = {}

    def rank_run(rank):
        info = SimpleNamespace(is_main=rank == 0, enabled=True, rank=rank)
        return SimpleNamespace(validate_pending=True, out_dir=str(tmp_path), info=info, epoch=3,
                               best={"val_top1": 0.125, "epoch": 0}, device=torch.device("cpu"))

    def reduce_rank0(t, info):
        sent["rank0"] = t.clone()
        return t

    monkeypatch.setattr(T.D, "all_reduce_sum", reduce_rank0)
    r0 = rank_run(0)
    T._pending_validation_from_metrics(r0)
    monkeypatch.setattr(T.D, "all_reduce_sum", lambda t, info: t + sent["rank0"])
    r1 = rank_run(1)
    T._pending_validation_from_metrics(r1)
    assert r0.best == r1.best == {"val_top1": 0.5, "epoch": 1}
    assert r0.validate_pending is True and r1.validate_pending is True   # epoch 2's validation is missing


FAIL_WORKER = textwrap.dedent("""
    import sys, time, torch
    import torch.distributed as dist
    import tdsk.engine.distributed as D
    info = D.init("cpu", timeout_s=40)
    if info.rank == 1:          # this rank hits an error and leaves (evaluate/extract's fail path)
        D.shutdown(info, sync=False)
        sys.exit(2)
    start = time.time()
    try:                        # rank 0 is inside a collective: it must fail now, not after the timeout
        parts = [None, None]
        dist.all_gather_object(parts, {"rank": 0})
        print("no error")
    except Exception as exc:
        print(f"rank 0 failed after {time.time() - start:.1f} s: {type(exc).__name__}")
    D.shutdown(info, sync=False)
""")


def test_shutdown_on_an_error_path_does_not_keep_the_other_ranks_waiting(tmp_path):
    worker = tmp_path / "fail_worker.py"
    worker.write_text(FAIL_WORKER)
    start = time.time()
    proc = run_tool("torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, timeout=120)
    assert "rank 0 failed after" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert time.time() - start < 30, proc.stdout     # the process group's timeout is 40 s
