"""Training end to end on real (generated) video, on the CPU: the demo command, exact
resume after SIGKILL, 2-process DDP with gloo via torch.distributed.run, NaN handling."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from helpers import assert_bit_identical, fast_overrides, run_tool, tool_env, write_recipe
from tdsk import demo
from tdsk.engine import checkpoint as C
from tdsk.engine.metrics import read_metrics
from tdsk.engine.trainer import NonFiniteLossError, build_model, fit
from tdsk.train import demo_config

# A small, fast setting of the demo recipe (32 px, few videos) for the tests.
FAST = fast_overrides("solver.epochs=3", "solver.warmup_epochs=1", "output.keep_last=10", "train.log_every=2")


@pytest.fixture(scope="module")
def small_root(demo_root):
    return demo_root(train_per_class=4, val_per_class=1)


def _cfg(root, *extra):
    return demo_config(root, FAST + list(extra))


def _train_args(cfg_path, out, *extra):
    return ["--cfg", cfg_path, "--output", str(out), "--no-progress", *extra]


def _train_cmd(cfg_path, out, *extra):
    return [sys.executable, "-m", "tdsk.train", *_train_args(cfg_path, out, *extra)]


# ----------------------------------------------------------------------------- demo

def test_demo_dataset_is_real_video_and_deterministic(tmp_path):
    import av

    spec = demo.DemoSpec(seed=3, train_per_class=1, val_per_class=1)
    a = demo.generate(spec, str(tmp_path / "a"), progress=False)
    b = demo.generate(spec, str(tmp_path / "b"), progress=False)
    lines = open(os.path.join(a, "train.txt")).read().split("\n")
    assert len([x for x in lines if x]) == len(demo.CLASSES)
    rel, label = lines[0].split()
    assert demo.CLASSES[int(label)] in rel
    with av.open(os.path.join(a, rel)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert c.streams.video[0].codec_context.name == "h264"
    assert len(frames) == spec.frames and frames[0].shape == (spec.size, spec.size, 3)
    with av.open(os.path.join(b, rel)) as c:
        again = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert all((x == y).all() for x, y in zip(frames, again))  # same seed, same video
    assert open(os.path.join(a, "labels.txt")).read().split() == list(demo.CLASSES)
    assert demo.generate(spec, str(tmp_path / "a"), progress=False) == a  # cached


def test_demo_command_smoke(tmp_path):
    """`python -m tdsk.train --demo` (what no arguments runs), cut to a few steps."""
    out = tmp_path / "runs"
    proc = run_tool("tdsk.train", "--demo", "--demo-cache", tmp_path / "cache", "--output", out, "--no-progress",
                    "solver.epochs=1", "train.limit_train_batches=2", "eval.limit_val_batches=1",
                    "train.tensorboard=false", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "tdsk demo results" in text and "TDS-CLIP" in text and "mean-pool baseline" in text
    for a, b in demo.REVERSED_PAIRS:
        assert f"{a} vs {b}" in text
    summary = json.load(open(out / "demo_summary.json"))
    for variant in ("tds_clip", "baseline"):
        run = summary["runs"][variant]
        assert os.path.isfile(run["checkpoint"]) and os.path.isfile(run["metrics"]) and os.path.isfile(run["curves"])
        assert run["checkpoint"] in text and run["curves"] in text
        records = [json.loads(x) for x in open(run["metrics"])]
        assert any(r["kind"] == "train" for r in records) and any(r["kind"] == "epoch" for r in records)


# ----------------------------------------------------------------------------- resume

def test_resume_after_sigkill_is_bit_identical(small_root, tmp_path):
    # 6 short epochs: the kill, somewhere in the 0.6 s after the first checkpoint, always
    # lands before the last one however fast the machine is
    cfg_path = write_recipe(_cfg(small_root, "solver.epochs=6"), tmp_path / "cfg.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted reference and the run to be killed, side by side.
    ref = subprocess.Popen(_train_cmd(cfg_path, straight), env=tool_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_train_cmd(cfg_path, killed), env=tool_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "epoch_0001.pt").exists():
        assert victim.poll() is None, "the run finished or died before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.6))  # somewhere after the first checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sorted(e for e, _ in C.epoch_checkpoints(str(killed)))
    assert done and done[-1] < 6, f"killed too late: {done}"
    resumed = run_tool("tdsk.train", *_train_args(cfg_path, killed, "--resume", "auto"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed}/epoch_{done[-1]:04d}.pt" in resumed.stderr
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    for epoch in range(done[-1] + 1, 7):  # every epoch boundary after the kill
        name = C.EPOCH_PATTERN.format(epoch)
        assert_bit_identical(C.load(str(straight / name)), C.load(str(killed / name)))
    records = read_metrics(str(killed / "metrics.jsonl"))  # the append-only file, resume markers resolved
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(6))  # no duplicates after resume


def test_resume_refuses_a_different_frozen_tower(small_root, tmp_path):
    cfg = _cfg(small_root, "solver.epochs=1", "train.limit_train_batches=1", "eval.validate=false")
    fit(cfg, output_dir=str(tmp_path), progress=False)
    ckpt = C.load(str(tmp_path / "epoch_0001.pt"))
    assert ckpt["frozen"]["weights_included"] and len(ckpt["frozen"]["weights_sha256"]) == 64
    assert {"optimizer_state_dict", "scheduler", "scaler", "rng", "epoch", "step", "config"} <= set(ckpt)
    ckpt["model_state_dict"] = C.trainable_state_dict(build_model(cfg))  # as if the CLIP weights were not saved
    for k in list(ckpt["model_state_dict"]):
        if k.startswith("encoder."):
            del ckpt["model_state_dict"][k]
    torch.manual_seed(123)
    other = build_model(cfg)  # another random CLIP
    with pytest.raises(RuntimeError, match="frozen CLIP weights differ"):
        C.load_model_state(other, ckpt)
    with pytest.raises(FileExistsError, match="--resume auto"):
        fit(cfg, output_dir=str(tmp_path), progress=False)


# ----------------------------------------------------------------------------- DDP

DDP_WORKER = textwrap.dedent("""
    import os, sys, torch, yaml
    from tdsk.config import load_config
    from tdsk.engine import checkpoint as C
    from tdsk.engine.trainer import fit
    cfg = load_config(sys.argv[1])
    import tdsk.engine.distributed as D
    info = D.init("cpu")
    holder = {}
    from tdsk.engine import trainer
    build = trainer.build_model
    def keep(*a, **k):
        holder["m"] = build(*a, **k)
        return holder["m"]
    trainer.build_model = keep
    res = fit(cfg, output_dir=sys.argv[2], progress=False, dist_info=info)
    # Parameters (trained and frozen). BatchNorm running statistics are per rank by
    # design: DDP broadcasts rank 0's buffers before each forward, then each rank
    # updates them from its own shard; rank 0's are the ones checkpointed.
    torch.save({k: v.detach().clone() for k, v in holder["m"].named_parameters()},
               os.path.join(sys.argv[2], f"rank{info.rank}.pt"))
    D.shutdown(info)
""")


def test_ddp_two_processes_gloo_weights_equal(small_root, tmp_path):
    cfg = _cfg(small_root, "solver.epochs=1", "train.limit_train_batches=2", "solver.warmup_epochs=0",
               "train.batch_size=3")
    cfg_path = write_recipe(cfg, tmp_path / "cfg.yaml")
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    out = tmp_path / "out"
    proc = run_tool("torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker, cfg_path, out,
                    timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0.keys() == r1.keys()
    diff = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not diff, f"ranks disagree on {diff[:5]}"
    assert any(k.startswith("encoder.") for k in r0) and any(k.startswith("side.") for k in r0)
    ckpt = C.load(str(out / "epoch_0001.pt"))  # written by rank 0 only, once
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2 and "rng_rank1" in ckpt
    init = build_model(cfg)  # the step changed the weights
    assert not torch.equal(init.state_dict()["head.weight"], r0["head.weight"])
    assert sorted(os.listdir(out)).count("metrics.jsonl") == 1


# ----------------------------------------------------------------------------- NaN

class NaNAfter(torch.nn.Module):
    def __init__(self, model, calls):
        super().__init__()
        self.model, self.calls, self.seen = model, calls, 0

    def forward(self, video):
        out = self.model(video)
        self.seen += 1 if self.training else 0
        return out * float("nan") if self.training and self.seen > self.calls else out


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(small_root, tmp_path):
    cfg = _cfg(small_root)
    per_epoch = len(open(os.path.join(small_root, "train.txt")).read().split()) // 2 // 6
    model = NaNAfter(build_model(cfg), calls=per_epoch + 1)  # second iteration of epoch 2
    with pytest.raises(NonFiniteLossError, match=r"epoch 2 iteration 2 \(global step %d\)" % (per_epoch + 2)):
        fit(cfg, output_dir=str(tmp_path), model=model, progress=False)
    assert [e for e, _ in C.epoch_checkpoints(str(tmp_path))] == [1]
    good = C.load(str(tmp_path / "epoch_0001.pt"))
    assert all(torch.isfinite(v).all() for v in good["model_state_dict"].values() if v.is_floating_point())


def test_nan_cli_exit_code_and_message(small_root, tmp_path):
    cfg_path = write_recipe(_cfg(small_root, "solver.lr=1e30", "solver.warmup_epochs=0"), tmp_path / "cfg.yaml")
    proc = run_tool("tdsk.train", *_train_args(cfg_path, tmp_path / "out"), timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "loss is nan" in proc.stderr.lower() and "global step" in proc.stderr
    assert "last good checkpoint" in proc.stderr


# ----------------------------------------------------------------------------- precision

class _DtypeProbe:
    """Records the dtype of the frozen taps (``FrozenCLIPEncoder`` outputs, via a global
    forward hook) and of the frame differences (the ``frame_diff_concat`` the SME-Adapter
    calls, monkeypatched) of every forward of any tdsk model while it is installed."""

    def __init__(self, monkeypatch):
        import tdsk.models.sme_adapter as sme
        from tdsk.models.clip_encoder import FrozenCLIPEncoder

        self.taps, self.diffs = [], []
        real = sme.frame_diff_concat

        def recording(*args, **kwargs):
            out = real(*args, **kwargs)
            self.diffs.append(out.dtype)
            return out

        def hook(module, inputs, output):
            if isinstance(module, FrozenCLIPEncoder):
                self.taps.extend({t.dtype for t in output})

        monkeypatch.setattr(sme, "frame_diff_concat", recording)
        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)

    def seen(self):
        return set(self.taps), set(self.diffs)

    def clear(self):
        self.taps.clear()
        self.diffs.clear()

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_accumulation_on_cpu(small_root, tmp_path, precision, monkeypatch):
    cfg = _cfg(small_root, f"train.precision={precision}", "solver.epochs=1", "train.limit_train_batches=2",
               "solver.grad_accumulation=2", "solver.warmup_epochs=0", "eval.limit_val_batches=1")
    probe = _DtypeProbe(monkeypatch)
    try:
        res = fit(cfg, output_dir=str(tmp_path), progress=False)
    finally:
        probe.remove()
    ckpt = C.load(res.last_checkpoint)
    assert ckpt["precision"] == precision and ckpt["step"] == 2
    assert (ckpt["scaler"] is not None) == (precision == "fp16")  # GradScaler only for fp16
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values() if v.is_floating_point())
    # The trainer really ran the model under autocast (training and validation forwards):
    # the frozen taps and the frame differences are stored in the autocast dtype.
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    assert probe.taps and probe.diffs, "no forward of the model was observed"
    assert probe.seen() == ({half}, {half})


# bf16 keeps 8 significant bits (relative rounding 2**-9). On the tiny model, logits of
# magnitude ~0.3, the measured max |bf16 - fp32| is ~1.5e-3 (eval and train mode); a
# regression that loses precision (or an op that stops following autocast) shows above 1e-2.
BF16_LOGITS_ATOL = 1e-2


@pytest.mark.parametrize("train_mode", [False, True])
def test_bf16_autocast_halves_taps_and_differences_and_keeps_the_logits(monkeypatch, train_mode):
    from tdsk.models import build_model as build

    torch.manual_seed(0)
    model = build("tiny", clip_pretrained=None).train(train_mode)
    v = torch.randn(2, 4, 5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    probe = _DtypeProbe(monkeypatch)
    try:
        with torch.no_grad():
            ref = model(v)
            assert probe.seen() == ({torch.float32}, {torch.float32})  # plain fp32: fp32 everywhere
            probe.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(v)
            assert probe.seen() == ({torch.bfloat16}, {torch.bfloat16})
    finally:
        probe.remove()
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max().item()
    print(f"bf16 vs fp32 logits (train={train_mode}): max |diff| {err:.2e}, max |logit| {ref.abs().max():.3f}")
    assert 0 < err <= BF16_LOGITS_ATOL  # 0 would mean autocast changed nothing


# ----------------------------------------------------------------------------- torch.compile

@pytest.mark.slow
def test_train_compile_matches_eager(small_root, tmp_path):
    """train.compile=true trains through torch.compile (inductor) to the same weights as eager."""
    common = ["solver.epochs=1", "train.limit_train_batches=2", "solver.warmup_epochs=0",
              "eval.limit_val_batches=1", "train.precision=fp32"]
    eager = C.load(fit(_cfg(small_root, *common), output_dir=str(tmp_path / "eager"), progress=False).last_checkpoint)
    torch._dynamo.reset()
    compiled = C.load(fit(_cfg(small_root, *common, "train.compile=true"), output_dir=str(tmp_path / "compiled"),
                          progress=False).last_checkpoint)
    assert compiled["step"] == eager["step"] == 2
    # Losses agree (same data, same init). Weights are compared only where the gradient
    # carries signal: conv biases right before a BatchNorm get pure rounding-noise
    # gradients, which AdamW amplifies to lr-sized, order-dependent steps.
    records = {}
    for name in ("eager", "compiled"):
        recs = read_metrics(str(tmp_path / name / "metrics.jsonl"))
        # the epoch record (train loss) and that epoch's validation record (val loss)
        records[name] = {**[r for r in recs if r["kind"] == "epoch"][-1], **[r for r in recs if r["kind"] == "val"][-1]}
    assert records["compiled"]["train_loss"] == pytest.approx(records["eager"]["train_loss"], rel=1e-5)
    assert records["compiled"]["val_loss"] == pytest.approx(records["eager"]["val_loss"], abs=1e-4)
    for key in ("head.weight", "head.bias"):
        torch.testing.assert_close(compiled["model_state_dict"][key], eager["model_state_dict"][key],
                                   atol=2e-4, rtol=1e-3)


def test_labels_beyond_num_classes_are_reported_with_the_list_line(small_root, tmp_path):
    cfg = _cfg(small_root, "model.num_classes=3", "solver.epochs=1", "data.flip_label_pairs=[[0,1]]")
    with pytest.raises(ValueError, match=r"train\.txt:\d+: label \d+ but model.num_classes=3"):
        fit(cfg, output_dir=str(tmp_path), progress=False)
