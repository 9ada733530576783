"""Device-run step ``ops``: tdsk vs the reference vs ``torch.compile(reference)`` on the shapes
of ``bench/bench_ops.py`` (``bench/benchlib.py``), plus the TD-Adapter's channels-last layout."""
from __future__ import annotations

import os
from typing import Callable, Dict

from runlib import CLIP_MEAN, CLIP_STD, add_case, bench, device_of, error_text, lazy_torch, note, raise_recompile_limits
from benchlib import FRAME_CASES, FRAME_CASES_DRY, POOL_CASES, POOL_CASES_DRY
from steps_env import copy_gbps


# ---------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------

def op_cases(dry: bool):
    """The shapes of bench/bench_ops.py (``dry``: shrunk), plus the TD-Adapter's training shape
    in its real channels-last layout."""
    pool = dict(POOL_CASES_DRY if dry else POOL_CASES)
    frames = dict(FRAME_CASES_DRY if dry else FRAME_CASES)
    pool = {"train_b16": pool["train_b16"], "train_b16_channels_last": pool["train_b16"],
            **{k: v for k, v in pool.items() if k != "train_b16"}}
    return pool, frames


def _ops_row(out, dev, op, case, mode, providers: Dict[str, Callable], nbytes: int, ceiling: float, dry: bool):
    row = {"op": op, "case": case, "mode": mode, "device": dev.type, "bytes_moved": int(nbytes),
           "providers": {}, "speedup": {}}
    for name, fn in providers.items():
        try:
            t = bench(fn, dev, dry)
            row["providers"][name] = {"median_s": t, "gb_per_s": nbytes / t / 1e9}
        except Exception as exc:
            row.setdefault("errors", {})[name] = error_text(exc)
            print(f"[ops] {op} {case} {mode} {name}: {error_text(exc)}", flush=True)
        tdsk_row = row["providers"].get("tdsk")
        if tdsk_row:
            for other, r in row["providers"].items():
                if other != "tdsk":
                    row["speedup"][other] = r["median_s"] / tdsk_row["median_s"]
            row["pct_of_copy_bandwidth"] = 100.0 * tdsk_row["gb_per_s"] / ceiling
        add_case(out, row)  # after every provider: a cut-off step keeps what it measured
    parts = [f"{n} {r['median_s'] * 1e3:.3f} ms ({r['gb_per_s']:.0f} GB/s)" for n, r in row["providers"].items()]
    pct = f", tdsk at {row['pct_of_copy_bandwidth']:.0f}% of copy" if "pct_of_copy_bandwidth" in row else ""
    print(f"[ops] {op} {case} {mode}: " + "; ".join(parts) + pct, flush=True)


def cmd_ops(args) -> int:
    torch = lazy_torch()
    import tdsk.ops as ops
    from tdsk.ops import reference

    raise_recompile_limits()
    dev = device_of(args.dry_run)
    ceiling = copy_gbps(args.out, dev, args.dry_run)
    pool_cases, frame_cases = op_cases(args.dry_run)
    compiled_pool = torch.compile(reference.temporal_pool_diff_reference, dynamic=False)
    compiled_frames = torch.compile(reference.frame_diff_concat_reference, dynamic=False)
    gen = torch.Generator(device=dev).manual_seed(0)

    for case, (shape, dtype) in pool_cases.items():
        if case.endswith("_channels_last"):
            # the TD-Adapter's real input: a [N, T, H, W, C] activation viewed as [N, C, T, H, W]
            # (channel stride 1, pixel stride C = 20)
            n_, c_, t_, h_, w_ = shape
            x = torch.randn((n_, t_, h_, w_, c_), device=dev, dtype=dtype, generator=gen).permute(0, 4, 1, 2, 3)
        else:
            x = torch.randn(shape, device=dev, dtype=dtype, generator=gen)
        size = x.numel() * x.element_size()
        providers = {"tdsk": lambda: ops.temporal_pool_diff(x, 3, 0.5),
                     "reference": lambda: reference.temporal_pool_diff_reference(x, 3, 0.5),
                     "compiled": lambda: compiled_pool(x, 3, 0.5)}
        if args.dry_run and dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            try:  # rehearse a Triton launch (interpreted on the CPU) on the smallest case
                import tdsk.kernels as K

                if case == "train_b16":
                    providers["triton_interpreted"] = lambda: K.temporal_pool_diff_forward(x, 3, 0.5)
            except Exception as exc:
                note(args.out, "ops", f"Triton kernels not importable under TRITON_INTERPRET=1: {error_text(exc)}")
        _ops_row(args.out, dev, "temporal_pool_diff", case, "forward", providers, 2 * size, ceiling, args.dry_run)

        xg = x.detach().clone().requires_grad_(True)  # clone keeps the strides (preserve_format)
        grad = torch.randn(shape, device=dev, dtype=dtype, generator=gen)

        def fwd_bwd(fn):
            def run():
                xg.grad = None
                fn(xg, 3, 0.5).backward(grad)
            return run

        providers = {"tdsk": fwd_bwd(ops.temporal_pool_diff),
                     "reference": fwd_bwd(reference.temporal_pool_diff_reference),
                     "compiled": fwd_bwd(compiled_pool)}
        _ops_row(args.out, dev, "temporal_pool_diff", case, "forward+backward", providers, 5 * size, ceiling,
                 args.dry_run)
        del x, xg, grad

    for case, (shape, dtype) in frame_cases.items():
        n, t, m, c, h, w = shape
        out_bytes = n * (m - 1) * c * t * h * w * 4
        if dtype == torch.uint8:
            frames = torch.randint(0, 256, shape, dtype=dtype, device=dev, generator=gen)
            mean, std = torch.tensor(CLIP_MEAN, device=dev), torch.tensor(CLIP_STD, device=dev)
            # tdsk gets the statistics as Python floats (what a loader passes): given as tensors,
            # the op checks their values on the host, three syncs that would be timed, not the op
            op_mean, op_std = CLIP_MEAN, CLIP_STD
        else:
            frames = torch.randn(shape, dtype=dtype, device=dev, generator=gen)
            mean = std = op_mean = op_std = None
        providers = {"tdsk": lambda: ops.frame_diff_concat(frames, op_mean, op_std),
                     "reference": lambda: reference.frame_diff_concat_reference(frames, mean, std),
                     "compiled": lambda: compiled_frames(frames, mean, std)}
        _ops_row(args.out, dev, "frame_diff_concat", case, "forward", providers,
                 frames.numel() * frames.element_size() + out_bytes, ceiling, args.dry_run)
        if dtype == torch.uint8:
            continue
        fg = frames.detach().clone().requires_grad_(True)
        grad = torch.randn(n, (m - 1) * c, t, h, w, device=dev, generator=gen)

        def fwd_bwd_frames(fn):
            def run():
                fg.grad = None
                fn(fg).backward(grad)
            return run

        providers = {"tdsk": fwd_bwd_frames(ops.frame_diff_concat),
                     "reference": fwd_bwd_frames(reference.frame_diff_concat_reference),
                     "compiled": fwd_bwd_frames(compiled_frames)}
        # forward reads the frames and writes the result; backward reads grad, writes grad_frames
        _ops_row(args.out, dev, "frame_diff_concat", case, "forward+backward", providers,
                 2 * frames.numel() * 4 + 2 * out_bytes, ceiling, args.dry_run)
    return 0
