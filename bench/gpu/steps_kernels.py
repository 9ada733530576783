"""Device-run steps ``kernels`` and ``userpath`` (docs/gpu-run.md).

``kernels``: what the op rows of ``ops`` do not show about the Triton kernels:

* one launch per op above 2**31 elements (the 64-bit offset path chosen on its own, not
  forced), checked against the reference on the last sample (the ops are independent
  per sample, so a slice of the input gives the same slice of the output), timed on the
  second call (the first compiles that variant);
* a 4-point ``block_hw`` sweep of the TD-Adapter's training shape (forward and backward;
  ``num_warps`` follows the tile size), beside the default choice.

``userpath``: what a user runs on CUDA, not a hand-written loop:

* ``torch.compile(fullgraph=True)`` of the tiny model, forward + backward under bf16
  autocast, against eager (time, loss and gradient agreement);
* one epoch of the real :func:`tdsk.engine.trainer.fit` on the generated demo data with
  ``train.precision=fp16 train.compile=true`` (GradScaler and inductor on the device).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Dict

from runlib import add_case, bench, device_of, error_text, lazy_torch, raise_recompile_limits, sync, time_steps, update

# ---------------------------------------------------------------------------
# kernels: > 2**31 elements, block sweep
# ---------------------------------------------------------------------------


def _event_time(fn, dev) -> float:
    """Seconds of one call of ``fn`` (CUDA events on a GPU, wall clock on a CPU)."""
    return time_steps(fn, dev, 0, 1)[0]


def _max_rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _big_pool(out: str, dev, dry: bool) -> Dict:
    torch = lazy_torch()
    import tdsk.ops as ops
    from tdsk.ops import reference

    # (8, 320, 16, 232, 232) bf16: 2.2e9 elements (> 2**31 = 2.147e9), 4.4 GB in, 4.4 GB out
    shape = (2, 8, 4, 16, 16) if dry else (8, 320, 16, 232, 232)
    numel = 1
    for s in shape:
        numel *= s
    x = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    xg = x.detach().requires_grad_(True)
    y = None

    def fwd():
        nonlocal y
        y = ops.temporal_pool_diff(xg, 3, 0.5)

    grad = torch.randn_like(x)
    # the first calls compile the 64-bit variants: time the second ones
    fwd()
    y.backward(grad)
    xg.grad = None
    t_fwd = _event_time(fwd, dev)
    t_bwd = _event_time(lambda: y.backward(grad), dev)
    sync(dev)
    xs = x[-1:].detach().clone().requires_grad_(True)
    ref = reference.temporal_pool_diff_reference(xs, 3, 0.5)
    ref.backward(grad[-1:])
    row = {"op": "temporal_pool_diff", "shape": list(shape), "numel": numel, "above_2_31": numel > 2**31,
           "dtype": "bfloat16", "forward_s": t_fwd, "backward_s": t_bwd,
           "forward_gb_per_s": 2 * numel * 2 / t_fwd / 1e9,
           "max_rel_diff_last_sample_fwd": _max_rel(y[-1:].detach(), ref.detach()),
           "max_rel_diff_last_sample_bwd": _max_rel(xg.grad[-1:], xs.grad)}
    del x, xg, y, grad, xs, ref
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _big_frames(out: str, dev, dry: bool) -> Dict:
    torch = lazy_torch()
    import tdsk.ops as ops
    from tdsk.ops import reference

    from runlib import CLIP_MEAN, CLIP_STD

    # (112, 8, 5, 3, 448, 448) uint8 -> (112, 12, 8, 448, 448) fp32: 2.16e9 output elements
    shape = (2, 2, 3, 3, 16, 16) if dry else (112, 8, 5, 3, 448, 448)
    n, t, m, c, h, w = shape
    out_numel = n * (m - 1) * c * t * h * w
    frames = torch.randint(0, 256, shape, device=dev, dtype=torch.uint8)
    res = None

    def fwd():
        nonlocal res
        res = ops.frame_diff_concat(frames, CLIP_MEAN, CLIP_STD)

    fwd()  # compiles the 64-bit variant: time the second call
    t_fwd = _event_time(fwd, dev)
    mean = torch.tensor(CLIP_MEAN, device=dev)
    std = torch.tensor(CLIP_STD, device=dev)
    ref = reference.frame_diff_concat_reference(frames[-1:], mean, std)
    row = {"op": "frame_diff_concat", "shape": list(shape), "out_numel": out_numel,
           "above_2_31": out_numel > 2**31, "dtype": "uint8 -> float32", "forward_s": t_fwd,
           "forward_gb_per_s": (frames.numel() + 4 * out_numel) / t_fwd / 1e9,
           "max_rel_diff_last_sample_fwd": _max_rel(res[-1:], ref)}
    del frames, res, ref
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _sweep(out: str, dev, dry: bool) -> Dict:
    """``block_hw`` in (64, 128, 256, 512) vs the default, at the TD-Adapter training shape."""
    torch = lazy_torch()
    import tdsk.kernels as K

    shape = (2, 20, 8, 7, 7) if dry else (32, 20, 8, 14, 14)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(shape, device=dev, dtype=dtype)
        g = torch.randn_like(x)
        for bhw in (None, 64, 128, 256, 512):
            entry = {"dtype": str(dtype).replace("torch.", ""), "block_hw": bhw or "default"}
            for mode, fn in (("forward", lambda: K.temporal_pool_diff_forward(x, 3, 0.5, block_hw=bhw)),
                             ("backward", lambda: K.temporal_pool_diff_backward(g, x, 3, 0.5, block_hw=bhw))):
                try:
                    entry[f"{mode}_s"] = bench(fn, dev, dry)
                except Exception as exc:
                    entry[f"{mode}_error"] = error_text(exc)
            rows.append(entry)
            update(out, "kernels_sweep", {"shape": list(shape), "rows": rows})
        for mode in ("forward", "backward"):
            timed = [r for r in rows if r["dtype"] == str(dtype).replace("torch.", "") and f"{mode}_s" in r]
            if timed:
                best = min(timed, key=lambda r: r[f"{mode}_s"])
                default = next((r for r in timed if r["block_hw"] == "default"), None)
                gain = default[f"{mode}_s"] / best[f"{mode}_s"] if default else None
                print(f"[kernels] sweep {dtype} {mode}: best block_hw={best['block_hw']} "
                      f"({best[f'{mode}_s'] * 1e6:.1f} us)" + (f", {gain:.2f}x the default" if gain else ""),
                      flush=True)
    return {"shape": list(shape), "rows": rows}


def cmd_kernels(args) -> int:
    dev = device_of(args.dry_run)
    for key, fn in (("big_temporal_pool_diff", _big_pool), ("big_frame_diff_concat", _big_frames)):
        try:
            row = fn(args.out, dev, args.dry_run)
        except Exception as exc:
            row = {"error": error_text(exc)}
            if dev.type == "cuda":
                lazy_torch().cuda.empty_cache()
        update(args.out, key, row)
        print(f"[kernels] {key}: {row}", flush=True)
    _sweep(args.out, dev, args.dry_run)
    return 0


# ---------------------------------------------------------------------------
# userpath: compile fullgraph, fit() with fp16 + compile
# ---------------------------------------------------------------------------


def _compiled_vs_eager(dev, dry: bool) -> Dict:
    torch = lazy_torch()
    import torch.nn.functional as F

    from tdsk.models import build_model

    torch.manual_seed(0)
    eager = build_model("tiny", clip_pretrained=None).to(dev)
    s = eager.encoder.image_size
    batch = 2 if dry else 16
    video = torch.randn(batch, eager.num_segments, eager.num_local, 3, s, s, device=dev)
    labels = torch.randint(0, eager.num_classes, (batch,), device=dev)
    compiled = torch.compile(eager, fullgraph=True)
    params = list(eager.trainable_parameters())

    def step(net):
        def run():
            for p in params:
                p.grad = None
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(net(video), labels)
            loss.backward()
            return loss
        return run

    loss_e = step(eager)()
    grads_e = [p.grad.detach().clone() for p in params if p.grad is not None]
    t0 = time.perf_counter()
    loss_c = step(compiled)()
    sync(dev)
    compile_s = time.perf_counter() - t0
    grads_c = [p.grad.detach().clone() for p in params if p.grad is not None]
    # per tensor ||g_c - g_e|| / ||g_e||, over tensors whose gradient is not ~0: the side
    # network's zero-initialised residual outputs leave some biases with an exactly-zero
    # gradient in exact arithmetic, where any rounding difference is "infinitely" relative
    norms = [float(e.float().norm()) for e in grads_e]
    floor = 1e-3 * max(norms, default=0.0)
    rel = [float((c.float() - e.float()).norm()) / n for c, e, n in zip(grads_c, grads_e, norms) if n > floor]
    total = sum(n * n for n in norms) ** 0.5
    global_rel = (sum(float((c.float() - e.float()).norm()) ** 2 for c, e in zip(grads_c, grads_e)) ** 0.5
                  / max(total, 1e-30))
    n_steps = 3 if dry else 20
    te = statistics.median(time_steps(step(eager), dev, 2, n_steps))
    tc = statistics.median(time_steps(step(compiled), dev, 2, n_steps))
    return {"model": "tiny", "batch": batch, "precision": "bf16 autocast", "fullgraph": True,
            "first_compiled_step_s": compile_s, "eager_step_s": te, "compiled_step_s": tc,
            "speedup_compiled_vs_eager": te / tc,
            "loss_eager": float(loss_e.detach()), "loss_compiled": float(loss_c.detach()),
            # bf16 autocast: both sides round differently
            "grad_global_rel_diff": global_rel,
            "grad_max_rel_diff": max(rel, default=None),
            "grad_median_rel_diff": statistics.median(rel) if rel else None,
            "grads_compared": len(grads_e)}


def _fit_fp16_compile(dev, dry: bool) -> Dict:
    from tdsk.cli import demo
    from tdsk.engine.metrics import read_metrics
    from tdsk.engine.trainer import fit
    from tdsk.cli.demo import demo_config

    root = demo.generate(demo.DemoSpec(seed=7, train_per_class=4, val_per_class=1),
                         tempfile.mkdtemp(prefix="tdsk-demo-"), progress=False)
    overrides = ["model.input_size=32", "data.input_size=32", "data.resize=32", "train.num_workers=0",
                 "train.tensorboard=false", "train.batch_size=6", "eval.batch_size=9", "solver.epochs=1",
                 "solver.warmup_epochs=0", "train.log_every=2", f"train.device={dev.type}",
                 "train.precision=" + ("fp16" if dev.type == "cuda" else "bf16"), "train.compile=true"]
    cfg = demo_config(root, overrides)
    out_dir = tempfile.mkdtemp(prefix="tdsk-fit-")
    t0 = time.perf_counter()
    result = fit(cfg, output_dir=out_dir, progress=False)
    seconds = time.perf_counter() - t0
    rows = read_metrics(result.metrics) if result.metrics and os.path.exists(result.metrics) else []
    last = {k: v for k, v in (rows[-1] if rows else {}).items() if isinstance(v, (int, float, str))}
    return {"overrides": overrides, "seconds": seconds, "epochs_done": result.epochs_done,
            "steps_done": result.steps_done, "best_val_top1": result.best_val_top1, "last_metrics": last}


def cmd_userpath(args) -> int:
    raise_recompile_limits()
    dev = device_of(args.dry_run)
    for key, fn in (("compile_fullgraph", _compiled_vs_eager), ("fit_fp16_compile", _fit_fp16_compile)):
        t0 = time.perf_counter()
        try:
            row = fn(dev, args.dry_run)
            row["status"] = "ok"
        except Exception as exc:
            import traceback

            traceback.print_exc()
            row = {"status": "error", "error": error_text(exc)}
        row["wall_s"] = time.perf_counter() - t0
        update(args.out, f"userpath_{key}", row)
        print(f"[userpath] {key}: {row}", flush=True)
        if key == "compile_fullgraph" and "speedup_compiled_vs_eager" in row:
            add_case(args.out, {"op": "tiny_model", "case": f"batch{row['batch']}", "mode": "fwd+bwd bf16",
                                "device": dev.type,
                                "providers": {"tdsk": {"median_s": row["compiled_step_s"]},
                                              "eager": {"median_s": row["eager_step_s"]}},
                                "speedup": {"eager": row["speedup_compiled_vs_eager"]}})
    return 0
