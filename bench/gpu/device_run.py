"""The steps of the GPU device run (``bench/gpu/run.sh`` calls them in order; docs/gpu-run.md).

Each step is one command that adds its numbers to ``OUT/results.json`` as soon as it has
them (after every measured row), so a step cut off by its time box still leaves what it
measured::

    python bench/gpu/device_run.py describe  OUT [--dry-run]   # first line: versions, devices
    python bench/gpu/device_run.py ceilings  OUT [--dry-run]   # copy bandwidth, bf16 matmul rate
    python bench/gpu/device_run.py ops       OUT [--dry-run]   # tdsk vs reference vs torch.compile(reference)
    python bench/gpu/device_run.py train     OUT [--dry-run] [--official PATH]   # B/16 training step
    python bench/gpu/device_run.py modules   OUT [--dry-run] [--official PATH]   # TD-Adapter, SME stem
    python bench/gpu/device_run.py inference OUT [--dry-run] [--official PATH]   # clips/s at 3x2 views
    python bench/gpu/device_run.py attention OUT [--dry-run]   # side attention: xformers vs SDPA
    python bench/gpu/device_run.py loader    OUT [--dry-run]   # DALI vs PyAV loader
    python bench/gpu/device_run.py mark      OUT STEP STATUS RC SECONDS BOX [--doctor F] [--junit F]
    python bench/gpu/device_run.py report    OUT               # results.md + results.png

``--dry-run`` shrinks every size so that the whole sequence runs on a CPU (timings are then
meaningless; what is rehearsed is that every step runs and records). ``--official PATH``
is a local copy of the official TDS-CLIP repository (BBYL9413/TDS-CLIP); only its
``clip/model.py`` is loaded (by file path; nothing of it is copied into tdsk). Without it
the official rows are skipped with a message.

Timing: ``triton.testing.do_bench`` medians on CUDA (L2 flushed between runs); training and
inference steps are timed one by one with CUDA events (median of the timed steps); on a
CPU, wall-clock medians. Every model here has random weights (``clip_pretrained=None``):
speed and memory do not depend on the values.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
RESULTS = "results.json"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------
# the results file (one JSON, rewritten atomically after every row)
# ---------------------------------------------------------------------------

def load(out: str) -> Dict:
    path = os.path.join(out, RESULTS)
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def _clean(value):
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def save(out: str, data: Dict) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RESULTS)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(_clean(data), fh, indent=1, default=str)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def update(out: str, key: str, value) -> None:
    data = load(out)
    data[key] = value
    save(out, data)


def add_case(out: str, case: Dict) -> None:
    """Add or replace one row of ``cases`` (the format bench/report.py reads)."""
    data = load(out)
    cases = [c for c in data.get("cases", []) if (c["op"], c["case"], c["mode"], c["device"]) !=
             (case["op"], case["case"], case["mode"], case["device"])]
    cases.append(case)
    data["cases"] = cases
    save(out, data)


def note(out: str, step: str, message: str) -> None:
    """A line for the report (skips, errors), also printed."""
    print(f"[{step}] {message}", flush=True)
    data = load(out)
    data.setdefault("notes", []).append(f"{step}: {message}")
    save(out, data)


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def sync(dev) -> None:
    torch = _torch()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench(fn: Callable, dev, dry: bool = False) -> float:
    """Median seconds of ``fn()``: ``triton.testing.do_bench`` on CUDA, wall clock on a CPU."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()  # warm-up
    times, deadline = [], time.perf_counter() + (0.3 if dry else 2.0)
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_steps(step: Callable, dev, warmup: int, steps: int) -> List[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` (CUDA events on a GPU)."""
    torch = _torch()
    for _ in range(warmup):
        step()
    sync(dev)
    times = []
    for _ in range(steps):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def autocast(dev):
    torch = _torch()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def device_of(dry: bool):
    torch = _torch()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def raise_recompile_limits() -> None:
    torch = _torch()
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


# ---------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------

def cmd_describe(args) -> int:
    import logging

    torch = _torch()
    from tdsk import doctor

    logging.getLogger("tdsk").setLevel(logging.ERROR)  # the fallbacks are in the line below

    vers = doctor.versions()
    devs = doctor.devices()
    gpu = next((d for d in devs if d["type"] == "cuda"), None)

    def v(key):
        return vers[key]["version"] or "-"

    t = vers["torch"]
    parts = [f"python {v('python')}", f"torch {t['version']} (CUDA {t['cuda'] or '-'}, cuDNN {t['cudnn'] or '-'})",
             f"triton {v('triton')}", f"open_clip {v('open_clip')}", f"PyAV {v('pyav')}",
             f"xformers {v('xformers')}", f"DALI {v('dali')}"]
    dev_s = []
    for d in devs:
        if d["type"] == "cpu":
            dev_s.append(f"cpu ({d['threads']} threads)")
        else:
            dev_s.append(f"{d['name']} {d['description']} (sm_{d['capability'].replace('.', '')}, "
                         f"{d['memory_gib']} GiB, driver {d['driver'] or '?'})")
    impl = doctor.implementations()
    line = (f"tdsk device run{' (DRY RUN: sizes shrunk, timings meaningless)' if args.dry_run else ''}: "
            + " | ".join(parts) + " | devices: " + ", ".join(dev_s)
            + f" | ops: cpu={impl['cpu']['temporal_pool_diff']['impl']}, "
              f"cuda={impl['cuda']['temporal_pool_diff']['impl']}")
    print(line, flush=True)
    data = {
        "machine": gpu["description"] if gpu else f"cpu-{platform.machine()}-{os.cpu_count()}threads",
        "gpu": gpu["description"] if gpu else None,
        "driver": gpu["driver"] if gpu else None,
        "torch": t["version"], "cuda": t["cuda"], "cudnn": t["cudnn"], "triton": vers["triton"]["version"],
        "python": vers["python"]["version"], "threads": torch.get_num_threads(),
        "dry_run": bool(args.dry_run),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "first_line": line,
        "versions": vers, "devices": devs, "implementations": impl,
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("TDSK_", "TRITON_", "CUDA_VISIBLE", "PYTHONPATH", "TORCHINDUCTOR"))},
        "official_repo": args.official,
    }
    save(args.out, data)  # a fresh results.json
    return 0


# ---------------------------------------------------------------------------
# ceilings
# ---------------------------------------------------------------------------

def cmd_ceilings(args) -> int:
    torch = _torch()
    dev = device_of(args.dry_run)
    result = {"device": str(dev)}
    nbytes = (8 << 20) if args.dry_run else (2 << 30)  # 2 GiB: ~35x the H200's L2
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), dev, args.dry_run)
    result.update(copy_bytes=nbytes, copy_median_s=t, copy_gb_per_s=2 * nbytes / t / 1e9,
                  copy_counts="bytes read + bytes written")
    print(f"[ceilings] device-to-device copy of {nbytes / 2**30:.3g} GiB: {t * 1e3:.3f} ms, "
          f"{result['copy_gb_per_s']:.0f} GB/s (read + write)", flush=True)
    update(args.out, "ceilings", result)
    del src, dst
    n = 256 if args.dry_run else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t = bench(lambda: a @ b, dev, args.dry_run)
    result.update(matmul_n=n, matmul_median_s=t, matmul_bf16_tflops=2 * n ** 3 / t / 1e12)
    print(f"[ceilings] bf16 matmul {n}x{n}x{n}: {t * 1e3:.3f} ms, {result['matmul_bf16_tflops']:.1f} TFLOP/s",
          flush=True)
    update(args.out, "ceilings", result)
    return 0


def copy_gbps(out: str, dev, dry: bool) -> float:
    """The copy bandwidth measured by ``ceilings`` (measured here when that step did not run)."""
    c = load(out).get("ceilings", {})
    if c.get("copy_gb_per_s"):
        return c["copy_gb_per_s"]
    torch = _torch()
    nbytes = (8 << 20) if dry else (1 << 30)
    src = torch.empty(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / bench(lambda: dst.copy_(src), dev, dry) / 1e9


# ---------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------

def op_cases(dry: bool):
    """The shapes of bench/bench_ops.py (``dry``: shrunk)."""
    torch = _torch()
    if dry:
        pool = {"train_b16": ((2, 20, 8, 7, 7), torch.float32),
                "train_b16_channels_last": ((2, 20, 8, 7, 7), torch.float32),
                "large": ((1, 32, 8, 14, 14), torch.float32),
                "large_bf16": ((1, 32, 8, 14, 14), torch.bfloat16)}
        frames = {"sme_4clips_f32": ((1, 4, 5, 3, 32, 32), torch.float32),
                  "sme_4clips_u8": ((1, 4, 5, 3, 32, 32), torch.uint8)}
    else:
        # TD-Adapter training shape for ViT-B/16 (4 clips x 8 frames, R = 20), a large one, and
        # the SME input of 4 clips of 8 x 5 frames at 224
        pool = {"train_b16": ((32, 20, 8, 14, 14), torch.float32),
                "train_b16_channels_last": ((32, 20, 8, 14, 14), torch.float32),
                "large": ((8, 320, 16, 28, 28), torch.float32),
                "large_bf16": ((8, 320, 16, 28, 28), torch.bfloat16)}
        frames = {"sme_4clips_f32": ((4, 8, 5, 3, 224, 224), torch.float32),
                  "sme_4clips_u8": ((4, 8, 5, 3, 224, 224), torch.uint8)}
    return pool, frames


def _ops_row(out, dev, op, case, mode, providers: Dict[str, Callable], nbytes: int, ceiling: float, dry: bool):
    row = {"op": op, "case": case, "mode": mode, "device": dev.type, "bytes_moved": int(nbytes),
           "providers": {}, "speedup": {}}
    for name, fn in providers.items():
        try:
            t = bench(fn, dev, dry)
            row["providers"][name] = {"median_s": t, "gb_per_s": nbytes / t / 1e9}
        except Exception as exc:
            row.setdefault("errors", {})[name] = _error(exc)
            print(f"[ops] {op} {case} {mode} {name}: {_error(exc)}", flush=True)
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
    torch = _torch()
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
                note(args.out, "ops", f"Triton kernels not importable under TRITON_INTERPRET=1: {_error(exc)}")
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


# ---------------------------------------------------------------------------
# the official implementation (loaded from a local copy, by file path)
# ---------------------------------------------------------------------------

def load_official(path: Optional[str]):
    """The official ``clip/model.py`` module, or ``None`` when no path was given."""
    if not path:
        return None
    import importlib.util

    model_py = path if path.endswith(".py") else os.path.join(path, "clip", "model.py")
    if not os.path.isfile(model_py):
        raise FileNotFoundError(f"{model_py} not found: --official takes the root of a local copy of "
                                "BBYL9413/TDS-CLIP (with clip/model.py)")
    spec = importlib.util.spec_from_file_location("tds_clip_official_model", model_py)
    mod = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(mod)
    return mod


def official_classifier(mod, tdsk_model):
    """The official model for ``tdsk_model``'s config: the official ``VisualTransformer``
    (frozen CLIP tower + side network, as ``clip.load`` builds it) and ``fc``, with the
    official freezing rule (everything of the visual tower frozen but the ``side`` parts)."""
    import torch.nn as nn

    c, enc = tdsk_model.config, tdsk_model.encoder

    class OfficialClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its dropout list
                self.visual = mod.VisualTransformer(
                    input_resolution=enc.image_size, patch_size=enc.patch_size, width=enc.width, layers=enc.layers,
                    heads=max(1, enc.width // 64), output_dim=int(c["side_dim"]), T=int(c["num_segments"]),
                    side_dim=int(c["side_dim"]), num_diff=int(c["num_local"]))
            self.fc = nn.Linear(int(c["side_dim"]), int(c["num_classes"]))
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("fc.") or "side" in name)

        def forward(self, x):  # the official (B*T, M*3, H, W) layout
            return self.fc(self.visual(x))

    return OfficialClassifier()


def parity(official, tdsk_model, video, dev) -> Dict:
    """Load tdsk's official-format state dict into the official model; fp32 eval logits compared."""
    torch = _torch()
    from tdsk.models import official_state_dict

    info = {}
    try:
        missing, unexpected = official.load_state_dict(official_state_dict(tdsk_model), strict=False)
        info.update(missing_keys=len(missing), unexpected_keys=len(unexpected),
                    missing_examples=list(missing)[:3], unexpected_examples=list(unexpected)[:3])
        if missing or unexpected:
            return info
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            official.eval(), tdsk_model.eval()
            with torch.no_grad():
                a = tdsk_model(video)
                b = official(video.reshape(-1, video.shape[2] * video.shape[3], *video.shape[-2:]))
            info.update(max_abs_diff=float((a.float() - b.float()).abs().max()), max_abs_logit=float(a.abs().max()))
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
            official.train(), tdsk_model.train()
    except Exception as exc:
        info["error"] = _error(exc)
    return info


def model_setting(dry: bool) -> Dict:
    if dry:
        return {"config": "tiny", "batch": 2, "videos": 2, "warmup": 1, "steps": 2}
    return {"config": "ssv1_b16", "batch": 32, "videos": 8, "warmup": 3, "steps": 10}


def _build_tdsk(setting, dev):
    torch = _torch()
    from tdsk.models import build_model

    torch.manual_seed(0)
    return build_model(setting["config"], clip_pretrained=None).to(dev)


def _video(model, batch, dev):
    torch = _torch()
    s = model.encoder.image_size
    gen = torch.Generator(device=dev).manual_seed(1)
    return torch.randn(batch, model.num_segments, model.num_local, 3, s, s, device=dev, generator=gen)


def _official_or_note(args, step):
    if not args.official:
        note(args.out, step, "official rows skipped: no path to a local copy of BBYL9413/TDS-CLIP given "
                             "(bash bench/gpu/run.sh OUT /path/to/TDS-CLIP)")
        return None
    try:
        return load_official(args.official)
    except Exception as exc:
        note(args.out, step, f"official rows skipped: {_error(exc)}")
        return None


# ---------------------------------------------------------------------------
# training step
# ---------------------------------------------------------------------------

def _train_row(name, net, inputs, labels, params, dev, setting) -> Dict:
    """One provider's training step: fwd + cross-entropy + bwd + AdamW, bf16 autocast."""
    torch = _torch()
    import torch.nn.functional as F

    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.15, betas=(0.9, 0.999))

    def step():
        with autocast(dev):
            loss = F.cross_entropy(net(inputs), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = {"provider": name, "trainable_params": sum(p.numel() for p in params)}
    step()  # first step: Triton JIT, cuDNN autotuning, optimizer state
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    times = time_steps(step, dev, setting["warmup"] - 1, setting["steps"])
    row.update(median_s=statistics.median(times), min_s=min(times), steps=len(times),
               clips_per_s=labels.shape[0] / statistics.median(times))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        row.update(peak_mem_gib=peak / 2**30, peak_above_weights_gib=(peak - base) / 2**30)
    del opt
    return row


def cmd_train(args) -> int:
    torch = _torch()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    model = _build_tdsk(setting, dev)
    b = setting["batch"]
    video = _video(model, b, dev)
    labels = torch.randint(0, model.num_classes, (b,), device=dev)
    t, m = model.num_segments, model.num_local
    header = {"config": setting["config"], "batch_clips": b, "frames": f"{t}x{m}", "size": model.encoder.image_size,
              "precision": "bf16 autocast", "optimizer": "AdamW", "device": dev.type}
    result = dict(header, rows={})
    print(f"[train] {setting['config']}: {b} clips of {t}x{m} frames at {model.encoder.image_size}, "
          f"fwd+bwd+AdamW, bf16 autocast", flush=True)
    rows = {"tdsk": lambda: _train_row("tdsk", model, video, labels, list(model.trainable_parameters()), dev,
                                       setting)}
    mod = _official_or_note(args, "train")
    official = None
    if mod is not None:
        official = official_classifier(mod, model).to(dev)
        result["parity"] = parity(official, model, video[:2], dev)
        print(f"[train] parity tdsk -> official weights: {result['parity']}", flush=True)
        off_in = video.reshape(b * t, m * 3, *video.shape[-2:])
        rows["official"] = lambda: _train_row("official", official, off_in, labels,
                                              [p for p in official.parameters() if p.requires_grad], dev, setting)
    update(args.out, "train", result)
    for name, fn in rows.items():
        try:
            row = fn()
        except Exception as exc:
            row = {"provider": name, "error": _error(exc)}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        result["rows"][name] = row
        msg = (f"{row['median_s'] * 1e3:.1f} ms/step, {row['clips_per_s']:.1f} clips/s"
               + (f", peak {row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else "")
               if "median_s" in row else row["error"])
        print(f"[train] {name}: {msg}", flush=True)
        if "tdsk" in result["rows"] and "official" in result["rows"] and "median_s" in result["rows"]["official"] \
                and "median_s" in result["rows"]["tdsk"]:
            result["speedup_vs_official"] = result["rows"]["official"]["median_s"] / result["rows"]["tdsk"]["median_s"]
            if "peak_mem_gib" in result["rows"]["tdsk"]:
                result["memory_ratio_vs_official"] = (result["rows"]["tdsk"]["peak_above_weights_gib"]
                                                      / result["rows"]["official"]["peak_above_weights_gib"])
        update(args.out, "train", result)
        case = {"op": "train_step", "case": f"{setting['config']}_{b}clips", "mode": "fwd+bwd+AdamW",
                "device": dev.type, "providers": {k: {"median_s": v["median_s"]} for k, v in result["rows"].items()
                                                  if "median_s" in v}, "speedup": {}}
        if "tdsk" in case["providers"] and "official" in case["providers"]:
            case["speedup"]["official"] = result["speedup_vs_official"]
        add_case(args.out, case)
    return 0


# ---------------------------------------------------------------------------
# modules: TD-Adapter, SME stem
# ---------------------------------------------------------------------------

def _module_rows(out, dev, dry, label, case, providers: Dict[str, Callable]) -> Dict:
    row = {"op": label, "case": case, "mode": "forward+backward", "device": dev.type, "providers": {},
           "speedup": {}}
    for name, fn in providers.items():
        try:
            row["providers"][name] = {"median_s": bench(fn, dev, dry)}
        except Exception as exc:
            row.setdefault("errors", {})[name] = _error(exc)
        if "tdsk" in row["providers"]:
            for other, r in row["providers"].items():
                if other != "tdsk":
                    row["speedup"][other] = r["median_s"] / row["providers"]["tdsk"]["median_s"]
        add_case(out, row)
    parts = [f"{n} {r['median_s'] * 1e3:.3f} ms" for n, r in row["providers"].items()]
    parts += [f"{n} ERROR {e}" for n, e in row.get("errors", {}).items()]
    print(f"[modules] {label} {case}: " + "; ".join(parts), flush=True)
    return row


class _OfficialStem:
    """The official SME stem, in the official layout ``[(B*T), M*3, H, W]``, on the official
    layer constructors (``conv_3xnxn_std``, ``BatchNorm3d``): the first lines of the official
    ``VisualTransformer.forward``, restated from the paper's Eq. 2-3 (centre frame through
    ``side_conv1``, consecutive differences through ``side_conv1_c5``, fused with 0.5)."""

    @staticmethod
    def build(mod, side_dim, patch, num_local, segments):
        import torch.nn as nn

        class OfficialStem(nn.Module):
            def __init__(self):
                super().__init__()
                self.T = segments
                self.side_conv1 = mod.conv_3xnxn_std(3, side_dim, kernel_size=patch, stride=patch)
                self.side_pre_bn3d = nn.BatchNorm3d(side_dim)
                self.side_conv1_c5 = mod.conv_3xnxn_std(3 * (num_local - 1), side_dim, kernel_size=patch,
                                                        stride=patch)
                self.side_pre_bn3d_c5 = nn.BatchNorm3d(side_dim)

            def forward(self, x):
                bt, mc, h, w = x.shape
                m = mc // 3
                f = x.view(bt, m, 3, h, w)
                diff = (f[:, 1:] - f[:, :-1]).reshape(bt, (m - 1) * 3, h, w)

                def vol(t):  # (b t) c h w -> b c t h w
                    return t.reshape(bt // self.T, self.T, *t.shape[1:]).transpose(1, 2)

                s_diff = self.side_pre_bn3d_c5(self.side_conv1_c5(vol(diff)))
                return self.side_pre_bn3d(self.side_conv1(vol(f[:, m // 2]))) + 0.5 * s_diff

        return OfficialStem()


def cmd_modules(args) -> int:
    torch = _torch()
    from tdsk.models.sme_adapter import SMEAdapter
    from tdsk.models.td_adapter import TDAdapter

    raise_recompile_limits()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    from tdsk.models import model_config

    cfg = model_config(setting["config"], clip_pretrained=None)
    d, t, m, b = int(cfg["side_dim"]), int(cfg["num_segments"]), int(cfg["num_local"]), setting["batch"]
    size = int(cfg["input_size"])
    patch = 16
    g = size // patch
    mod = _official_or_note(args, "modules")
    result = {"td_adapter": {}, "sme": {}}
    gen = torch.Generator(device=dev).manual_seed(2)

    # TD-Adapter on the side network's conv-stack output: tokens [B, T, N, D] (tdsk) and
    # the volume [B, D, T, g, g] (official SAModule), bf16 under autocast as in training.
    torch.manual_seed(0)
    td = TDAdapter(d, reduction=int(cfg["td_reduction"]), kernel_size=int(cfg["pool_kernel"]),
                   channel_mix=float(cfg["td_channel_mix"])).to(dev)
    y = torch.randn(b, t, g * g, d, device=dev, generator=gen, dtype=torch.bfloat16)
    grad_y = torch.randn_like(y)
    y_vol = y.permute(0, 3, 1, 2).reshape(b, d, t, g, g).contiguous()
    grad_vol = grad_y.permute(0, 3, 1, 2).reshape(b, d, t, g, g).contiguous()

    def fwd_bwd(module, inp, grad):
        leaf = inp.detach().clone().requires_grad_(True)

        def run():
            leaf.grad = None
            with autocast(dev):
                out = module(leaf)
            out.backward(grad)
        return run

    providers = {"tdsk": fwd_bwd(td, y, grad_y)}
    if mod is not None:
        official_td = mod.SAModule(d, reduction=int(cfg["td_reduction"]), n_segment=t).to(dev)
        missing = official_td.load_state_dict(td.state_dict(), strict=False)
        with torch.no_grad():
            yt = y.float()
            a = td(yt)
            o = official_td(yt.permute(0, 3, 1, 2).reshape(b, d, t, g, g))
        result["td_adapter"]["parity_max_abs_diff"] = float(
            (a.permute(0, 3, 1, 2).reshape(b, d, t, g, g) - o).abs().max())
        result["td_adapter"]["parity_keys"] = {"missing": len(missing.missing_keys),
                                               "unexpected": len(missing.unexpected_keys)}
        providers["official"] = fwd_bwd(official_td, y_vol, grad_vol)
        providers["official_compiled"] = fwd_bwd(torch.compile(official_td, dynamic=False), y_vol, grad_vol)
    result["td_adapter"]["row"] = _module_rows(args.out, dev, args.dry_run, "td_adapter",
                                               f"D{d}_{b}x{t}x{g}x{g}_bf16", providers)
    update(args.out, "modules", result)

    # SME stem (SME-Adapter): frames [B, T, M, 3, H, W] fp32 (normalised, no grad) -> S0, under
    # bf16 autocast; the backward reaches the stem's weights.
    torch.manual_seed(0)
    sme = SMEAdapter(d, patch, num_local=m, fusion_alpha=float(cfg["fusion_alpha"]), mode="kernel").to(dev)
    sme_folded = SMEAdapter(d, patch, num_local=m, fusion_alpha=float(cfg["fusion_alpha"]), mode="folded").to(dev)
    sme_folded.load_state_dict(sme.state_dict())
    video = torch.randn(b, t, m, 3, size, size, device=dev, generator=gen)
    official_in = video.reshape(b * t, m * 3, size, size)
    with torch.no_grad(), autocast(dev):
        out_shape = sme(video).shape
    grad_s = torch.randn(out_shape, device=dev, generator=gen, dtype=torch.bfloat16)

    def fwd_bwd_stem(module, inp):
        def run():
            module.zero_grad(set_to_none=True)
            with autocast(dev):
                out = module(inp)
            out.backward(grad_s)
        return run

    providers = {"tdsk": fwd_bwd_stem(sme, video), "tdsk_folded": fwd_bwd_stem(sme_folded, video)}
    if mod is not None:
        stem = _OfficialStem.build(mod, d, patch, m, t).to(dev)
        names = {"rgb_conv": "side_conv1", "rgb_bn": "side_pre_bn3d", "diff_conv": "side_conv1_c5",
                 "diff_bn": "side_pre_bn3d_c5"}
        state = {}
        for k, v in sme.state_dict().items():
            head, rest = k.split(".", 1)
            state[f"{names[head]}.{rest}"] = v
        stem.load_state_dict(state)
        with torch.no_grad():
            diff = (sme(video) - stem(official_in)).abs().max()
        result["sme"]["parity_max_abs_diff"] = float(diff)
        providers["official"] = fwd_bwd_stem(stem, official_in)
        providers["official_compiled"] = fwd_bwd_stem(torch.compile(stem, dynamic=False), official_in)
    result["sme"]["row"] = _module_rows(args.out, dev, args.dry_run, "sme_stem", f"D{d}_{b}x{t}x{m}_{size}px",
                                        providers)
    update(args.out, "modules", result)
    return 0


# ---------------------------------------------------------------------------
# inference at 3x2 views
# ---------------------------------------------------------------------------

def cmd_inference(args) -> int:
    torch = _torch()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    model = _build_tdsk(setting, dev).eval()
    views = 6  # 3 spatial crops x 2 temporal clips, each view a clip of T x M frames
    n = setting["videos"]
    video = _video(model, n * views, dev)
    t, m = model.num_segments, model.num_local
    result = {"config": setting["config"], "videos_per_batch": n, "views": "3x2", "clips_per_batch": n * views,
              "precision": "bf16 autocast", "rows": {}}
    nets = {"tdsk": (model, video)}
    mod = _official_or_note(args, "inference")
    if mod is not None:
        nets["official"] = (official_classifier(mod, model).to(dev).eval(),
                            video.reshape(n * views * t, m * 3, *video.shape[-2:]))
    for name, (net, inp) in nets.items():
        def fwd(net=net, inp=inp):
            with torch.no_grad(), autocast(dev):
                return net(inp)
        try:
            times = time_steps(fwd, dev, setting["warmup"], setting["steps"])
            med = statistics.median(times)
            result["rows"][name] = {"median_s": med, "videos_per_s": n / med, "clips_per_s": n * views / med}
            print(f"[inference] {name}: {n} videos x 6 views in {med * 1e3:.1f} ms: {n / med:.1f} videos/s, "
                  f"{n * views / med:.1f} clips/s", flush=True)
        except Exception as exc:
            result["rows"][name] = {"error": _error(exc)}
            print(f"[inference] {name}: {_error(exc)}", flush=True)
        update(args.out, "inference", result)
    case = {"op": "inference_3x2", "case": f"{setting['config']}_{n}videos", "mode": "forward", "device": dev.type,
            "providers": {k: {"median_s": v["median_s"]} for k, v in result["rows"].items() if "median_s" in v},
            "speedup": {}}
    if "tdsk" in case["providers"] and "official" in case["providers"]:
        case["speedup"]["official"] = case["providers"]["official"]["median_s"] / case["providers"]["tdsk"]["median_s"]
    add_case(args.out, case)
    return 0


# ---------------------------------------------------------------------------
# extras: side attention, loader
# ---------------------------------------------------------------------------

def cmd_attention(args) -> int:
    torch = _torch()
    from tdsk.ops.attention import attention, attention_backend

    dev = device_of(args.dry_run)
    # the side blocks of B/16: B*T = 256 frames, 196 patch tokens attend to [cls, patches], 5 heads of 64
    bt, l, h, d = (4, 16, 2, 64) if args.dry_run else (256, 196, 5, 64)
    gen = torch.Generator(device=dev).manual_seed(3)
    q = torch.randn(bt, l, h, d, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(bt, l + 1, h, d, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn_like(k)
    backends = ["sdpa"]
    if dev.type == "cuda" and attention_backend(dev) == "xformers":
        backends.insert(0, "xformers")
    else:
        note(args.out, "attention", "xformers row skipped: " + ("no CUDA device" if dev.type != "cuda"
                                                                 else "xformers not available"))
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    grad = torch.randn_like(q)
    result = {"shape": f"q[{bt},{l},{h},{d}] kv[{bt},{l + 1},{h},{d}] bf16", "rows": {}}
    for mode in ("forward", "forward+backward"):
        row = {"op": "side_attention", "case": f"{bt}x{l}x{h}x{d}_bf16", "mode": mode, "device": dev.type,
               "providers": {}, "speedup": {}}
        for backend in backends:
            if mode == "forward":
                def fn(backend=backend):
                    return attention(q, k, v, backend=backend)
            else:
                def fn(backend=backend):
                    for t in leaves:
                        t.grad = None
                    attention(*leaves, backend=backend).backward(grad)
            try:
                row["providers"][backend] = {"median_s": bench(fn, dev, args.dry_run)}
            except Exception as exc:
                row.setdefault("errors", {})[backend] = _error(exc)
        if "xformers" in row["providers"] and "sdpa" in row["providers"]:
            row["speedup"]["sdpa_over_xformers"] = (row["providers"]["sdpa"]["median_s"]
                                                    / row["providers"]["xformers"]["median_s"])
        result["rows"][mode] = row
        update(args.out, "attention", result)
        print(f"[attention] {mode}: " + "; ".join(f"{n} {r['median_s'] * 1e3:.3f} ms"
                                                  for n, r in row["providers"].items()), flush=True)
    return 0


def _write_videos(root: str, dry: bool) -> Dict[str, str]:
    """Small test videos written with PyAV (h264 mp4 and VP9 webm), and their list files."""
    import av
    import numpy as np

    w, h, frames, count = (64, 48, 24, 4) if dry else (426, 240, 64, 16)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    imgs = []
    for i in range(frames):  # a moving texture: real decode work, unlike flat frames
        base = ((xx + 3 * i) * 7 % 192 + (yy * 5) % 64).astype(np.int64)
        noise = rng.integers(0, 24, size=(h, w))
        imgs.append(np.stack([base, (base + noise) % 256, 255 - base], axis=-1).astype(np.uint8))
    lists = {}
    for codec, ext in (("libx264", "mp4"), ("libvpx-vp9", "webm")):
        path = os.path.join(root, f"clip.{ext}")
        with av.open(path, "w") as container:
            stream = container.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt, stream.gop_size = w, h, "yuv420p", 32
            stream.options = ({"preset": "ultrafast", "crf": "23"} if codec == "libx264"
                              else {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"})
            for img in imgs:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        lists[ext] = os.path.join(root, f"list_{ext}.txt")
        with open(lists[ext], "w") as fh:
            fh.write("".join(f"clip.{ext} {i % 10}\n" for i in range(count)))
    return {"root": root, "count": count, **lists}


def cmd_loader(args) -> int:
    from tdsk.data import build_loader, dali_available

    dev = device_of(args.dry_run)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(8, cores)
    result = {"rows": {}, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="tdsk-loader-") as root:
        vids = _write_videos(root, args.dry_run)
        size = 64 if args.dry_run else 224
        runs = [("pyav", "mp4"), ("pyav", "webm")]
        if dali_available():
            runs += [("dali", "mp4"), ("dali", "webm")] if dev.type == "cuda" else [("dali-cpu", "webm")]
        else:
            note(args.out, "loader", "DALI rows skipped: nvidia-dali not installed")
        for decoder, ext in runs:
            cfg = dict(root=vids["root"], val_list=vids[ext], decoder="dali" if decoder == "dali" else "pyav",
                       num_workers=workers, rand_augment=None, input_size=size,
                       resize=[size + size // 7, size + size // 2], num_segments=8, num_local=5)
            key = f"{decoder}_{ext}"
            try:
                if decoder == "dali-cpu":
                    from tdsk.data import DataConfig
                    from tdsk.data.dali import build_dali_loader
                    from tdsk.data.loader import load_records

                    dc = DataConfig.from_dict(cfg)
                    loader = build_dali_loader(dc, "val", load_records(dc, "val"), batch_size=4, device=dev)
                else:
                    loader = build_loader(cfg, "val", batch_size=4, device=dev, num_workers=workers)

                def epoch():
                    n = sum(v.shape[0] for v, _ in loader)
                    sync(dev)
                    return n

                clips = epoch()  # warm-up: workers, pipelines
                times = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    epoch()
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                result["rows"][key] = {"decoder": decoder, "codec": ext, "clips": clips, "median_s": med,
                                       "clips_per_s": clips / med}
                print(f"[loader] {key}: {clips / med:.1f} clips/s ({clips} clips of 8x5 frames at {size}, "
                      f"{workers} workers)", flush=True)
            except Exception as exc:
                result["rows"][key] = {"decoder": decoder, "codec": ext, "error": _error(exc)}
                print(f"[loader] {key}: {_error(exc)}", flush=True)
            update(args.out, "loader", result)
    return 0


# ---------------------------------------------------------------------------
# bookkeeping: step status, doctor / pytest summaries, report
# ---------------------------------------------------------------------------

def _junit_summary(path: str) -> Dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    s = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped_reasons = [], {}
    for suite in suites:
        for k in s:
            s[k] += int(suite.get(k, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    failed.append({"test": name, "message": (el.get("message") or "")[:300]})
            sk = case.find("skipped")
            if sk is not None:
                reason = (sk.get("message") or "")[:120]
                skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
    s["passed"] = s["tests"] - s["failures"] - s["errors"] - s["skipped"]
    s["failed_tests"] = failed
    s["skip_reasons"] = skipped_reasons
    return s


def cmd_mark(args) -> int:
    data = load(args.out)
    data.setdefault("steps", {})[args.step] = {"status": args.status, "rc": int(args.rc),
                                               "seconds": int(args.seconds), "box": int(args.box)}
    if args.doctor and os.path.exists(args.doctor) and os.path.getsize(args.doctor):
        try:
            with open(args.doctor) as fh:
                rep = json.load(fh)
            data["doctor"] = {k: rep.get(k) for k in ("ok", "summary", "failed", "seconds", "implementations")}
            data["doctor"]["problems"] = [{"name": c["name"], "status": c["status"], "detail": c["detail"]}
                                          for c in rep.get("checks", []) if c["status"] in ("fail", "error")]
            from tdsk.doctor import format_report

            print(format_report(rep), flush=True)
        except Exception as exc:
            data["doctor"] = {"error": f"doctor.json unreadable: {_error(exc)}"}
    elif args.doctor:
        data["doctor"] = {"error": "the doctor wrote no report (cut off?)"}
    if args.junit:
        try:
            data["pytest_gpu"] = _junit_summary(args.junit)
        except Exception as exc:
            data["pytest_gpu"] = {"error": f"no junit report ({_error(exc)})"}
    save(args.out, data)
    print(f"[{args.step}] {args.status} (rc {args.rc}) in {args.seconds} s (box {args.box} s)", flush=True)
    return 0


def _ms(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def markdown(data: Dict) -> str:
    L = []
    dry = " — DRY RUN (CPU rehearsal: sizes shrunk, timings meaningless)" if data.get("dry_run") else ""
    L.append(f"# tdsk device run: {data.get('machine')}{dry}")
    L.append("")
    L.append(f"GPU **{data.get('gpu') or '-'}**, driver {data.get('driver') or '-'}, torch {data.get('torch')}, "
             f"triton {data.get('triton')}, CUDA {data.get('cuda') or '-'}, cuDNN {data.get('cudnn') or '-'}, "
             f"Python {data.get('python')}; started {data.get('started')}.")
    if data.get("first_line"):
        L += ["", "```", data["first_line"], "```"]
    steps = data.get("steps", {})
    if steps:
        L += ["", "| step | status | seconds (box) |", "|---|---|---:|"]
        for name, s in steps.items():
            L.append(f"| {name} | {s['status']} | {s['seconds']} ({s['box']}) |")
    doc = data.get("doctor")
    if doc:
        if "error" in doc:
            L += ["", f"**doctor**: {doc['error']}"]
        else:
            s = doc.get("summary") or {}
            L += ["", f"**doctor**: {'ok' if doc.get('ok') else 'FAILED'} — {s.get('passed')} passed, "
                      f"{(s.get('failed') or 0) + (s.get('errors') or 0)} failed, {s.get('skipped')} skipped "
                      f"({doc.get('seconds')} s)."]
            for p in doc.get("problems", []):
                L.append(f"- {p['status'].upper()} `{p['name']}`: {p['detail']}")
            impl = doc.get("implementations") or {}
            if impl:
                L += ["", "| op | " + " | ".join(impl) + " |", "|---|" + "---|" * len(impl)]
                for op in next(iter(impl.values())):
                    L.append(f"| {op} | " + " | ".join(f"{impl[d][op]['impl']} ({impl[d][op]['reason']})"
                                                       for d in impl) + " |")
    pt = data.get("pytest_gpu")
    if pt:
        if "error" in pt:
            L += ["", f"**pytest -m gpu**: {pt['error']}"]
        else:
            L += ["", f"**pytest -m gpu**: {pt['passed']} passed, {pt['failures'] + pt['errors']} failed, "
                      f"{pt['skipped']} skipped."]
            for f in pt.get("failed_tests", []):
                L.append(f"- FAILED `{f['test']}`: {f['message']}")
            for reason, n in list(pt.get("skip_reasons", {}).items())[:6]:
                L.append(f"- skipped ({n}): {reason}")
    c = data.get("ceilings")
    if c:
        L += ["", "**Ceilings**: device copy "
                  + (f"{c['copy_gb_per_s']:.0f} GB/s (read + write, {c['copy_bytes'] / 2**30:.3g} GiB)"
                     if "copy_gb_per_s" in c else "-")
                  + ", bf16 matmul "
                  + (f"{c['matmul_bf16_tflops']:.0f} TFLOP/s ({c['matmul_n']}^3)" if "matmul_bf16_tflops" in c
                     else "-") + "."]
    ops_rows = [r for r in data.get("cases", []) if r["op"] in ("temporal_pool_diff", "frame_diff_concat")]
    if ops_rows:
        L += ["", "| op | case | mode | tdsk | GB/s | % of copy | reference | compiled |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in ops_rows:
            p = r["providers"]
            td = p.get("tdsk", {})

            def other(name):
                if name not in p:
                    return "-"
                sp = r["speedup"].get(name)
                return f"{_ms(p[name]['median_s'])}" + (f" ({sp:.2f}x)" if sp else "")

            pct = f"{r['pct_of_copy_bandwidth']:.0f}%" if "pct_of_copy_bandwidth" in r else "-"
            gbs = f"{td['gb_per_s']:.0f}" if "gb_per_s" in td else "-"
            L.append(f"| {r['op']} | {r['case']} | {r['mode']} | {_ms(td.get('median_s'))} | {gbs} | {pct} | "
                     f"{other('reference')} | {other('compiled')} |")
        L.append("")
        L.append("(x) = that provider's time / tdsk's: how many times faster tdsk is.")
    tr = data.get("train")
    if tr:
        L += ["", f"**Training step** ({tr['config']}, {tr['batch_clips']} clips of {tr['frames']} frames at "
                  f"{tr['size']}, {tr['precision']}, {tr['optimizer']}):", "",
              "| provider | ms/step | clips/s | peak memory | above weights |", "|---|---:|---:|---:|---:|"]
        for name, r in tr.get("rows", {}).items():
            if "error" in r:
                L.append(f"| {name} | error: {r['error']} | | | |")
            else:
                mem = f"{r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else "-"
                above = f"{r['peak_above_weights_gib']:.2f} GiB" if "peak_above_weights_gib" in r else "-"
                L.append(f"| {name} | {r['median_s'] * 1e3:.1f} | {r['clips_per_s']:.1f} | {mem} | {above} |")
        if "speedup_vs_official" in tr:
            L.append("")
            L.append(f"tdsk is **{tr['speedup_vs_official']:.2f}x** the official step speed"
                     + (f", with {tr['memory_ratio_vs_official']:.2f}x its activation memory"
                        if "memory_ratio_vs_official" in tr else "") + ".")
        par = tr.get("parity")
        if par:
            if "max_abs_diff" in par:
                text = (f"all keys matched, max |logit difference| {par['max_abs_diff']:.2g} "
                        f"(max |logit| {par['max_abs_logit']:.2g})")
            else:
                text = ", ".join(f"{k} {v}" for k, v in par.items())
            L.append(f"Parity (tdsk's weights loaded into the official model, fp32 eval, 2 clips): {text}.")
    mods = data.get("modules")
    if mods:
        L += ["", "| module | case | provider | fwd+bwd | tdsk speed-up |", "|---|---|---|---:|---:|"]
        for key in ("td_adapter", "sme"):
            r = mods.get(key, {}).get("row")
            if not r:
                continue
            for name, p in r["providers"].items():
                sp = r["speedup"].get(name)
                L.append(f"| {r['op']} | {r['case']} | {name} | {_ms(p['median_s'])} | {f'{sp:.2f}x' if sp else ''} |")
            for name, e in r.get("errors", {}).items():
                L.append(f"| {r['op']} | {r['case']} | {name} | error: {e} | |")
            if "parity_max_abs_diff" in mods[key]:
                L.append(f"| {r['op']} | parity vs official (fp32) | max abs diff | "
                         f"{mods[key]['parity_max_abs_diff']:.3g} | |")
    inf = data.get("inference")
    if inf:
        L += ["", f"**Inference** ({inf['config']}, {inf['views']} views, {inf['videos_per_batch']} videos = "
                  f"{inf['clips_per_batch']} clips per batch, {inf['precision']}):"]
        for name, r in inf.get("rows", {}).items():
            L.append(f"- {name}: " + (f"{r['videos_per_s']:.1f} videos/s, {r['clips_per_s']:.1f} clips/s "
                                      f"({_ms(r['median_s'])} per batch)" if "median_s" in r else r["error"]))
    at = data.get("attention")
    if at:
        L += ["", f"**Side attention** ({at['shape']}):"]
        for mode, r in at.get("rows", {}).items():
            L.append(f"- {mode}: " + ", ".join(f"{n} {_ms(p['median_s'])}" for n, p in r["providers"].items()))
    lo = data.get("loader")
    if lo:
        L += ["", f"**Loader** (val, 8x5 frames, {lo['workers']} workers):"]
        step_rate = ((data.get("train") or {}).get("rows", {}).get("tdsk") or {}).get("clips_per_s")
        for key, r in lo.get("rows", {}).items():
            vs = (f" ({r['clips_per_s'] / step_rate:.2f}x the {step_rate:.1f} clips/s the tdsk training step "
                  f"consumes)" if step_rate and "clips_per_s" in r else "")
            L.append(f"- {key}: " + (f"{r['clips_per_s']:.1f} clips/s{vs}" if "clips_per_s" in r else r["error"]))
    for key in ("big_temporal_pool_diff", "big_frame_diff_concat"):
        r = data.get(key)
        if not r:
            continue
        if "error" in r:
            L += ["", f"**One launch above 2^31 elements, {key[4:]}**: error: {r['error']}"]
            continue
        n = r.get("numel", r.get("out_numel"))
        bwd = (f", backward {_ms(r['backward_s'])} (max rel diff {r['max_rel_diff_last_sample_bwd']:.2g})"
               if "backward_s" in r else "")
        L += ["", f"**One launch above 2^31 elements, {r['op']}** {tuple(r['shape'])} {r['dtype']} "
                  f"({n:.3g} elements): forward {_ms(r['forward_s'])}, {r['forward_gb_per_s']:.0f} GB/s, "
                  f"max rel diff on the last sample vs reference {r['max_rel_diff_last_sample_fwd']:.2g}{bwd}."]
    sw = data.get("kernels_sweep")
    if sw:
        L += ["", f"**block_hw sweep**, temporal_pool_diff {tuple(sw['shape'])}, k=3, a=0.5:", "",
              "| dtype | block_hw | forward | backward |", "|---|---|---:|---:|"]
        for r in sw["rows"]:
            L.append(f"| {r['dtype']} | {r['block_hw']} | {_ms(r.get('forward_s')) if 'forward_s' in r else r.get('forward_error', '-')} | "
                     f"{_ms(r.get('backward_s')) if 'backward_s' in r else r.get('backward_error', '-')} |")
    up = data.get("userpath_compile_fullgraph")
    if up:
        if up.get("status") == "ok":
            glob = (f"gradient difference relative to the whole gradient {up['grad_global_rel_diff']:.2g}, "
                    if "grad_global_rel_diff" in up else "")
            text = (f"eager {_ms(up['eager_step_s'])}, compiled {_ms(up['compiled_step_s'])} "
                    f"({up['speedup_compiled_vs_eager']:.2f}x; first compiled step {up['first_compiled_step_s']:.1f} s), "
                    f"loss {up['loss_eager']:.5f} vs {up['loss_compiled']:.5f}, {glob}"
                    f"per-tensor relative grad difference (norm) max {up['grad_max_rel_diff']:.2g}, "
                    f"median {up['grad_median_rel_diff']:.2g} over {up['grads_compared']} tensors.")
        else:
            text = f"error: {up.get('error')}"
        L += ["", "**torch.compile(fullgraph=True)**, tiny model fwd+bwd, bf16 autocast: " + text]
    uf = data.get("userpath_fit_fp16_compile")
    if uf:
        L += ["", "**fit() one demo epoch, train.precision=fp16 train.compile=true**: "
              + (f"{uf['seconds']:.1f} s, {uf['steps_done']} steps, best val top-1 {uf['best_val_top1']}, "
                 f"last metrics {uf['last_metrics']}."
                 if uf.get("status") == "ok" else f"error: {uf.get('error')}")]
    if data.get("notes"):
        L += ["", "Notes:"] + [f"- {n}" for n in data["notes"]]
    return "\n".join(L) + "\n"


def cmd_report(args) -> int:
    data = load(args.out)
    md = os.path.join(args.out, "results.md")
    with open(md, "w") as fh:
        fh.write(markdown(data))
    print(f"[report] wrote {md}", flush=True)
    sys.path.insert(0, BENCH)
    try:
        import report as bench_report  # bench/report.py: the PNG of the tdsk ratios

        summary = {k: data.get(k) for k in ("machine", "torch", "triton", "cuda", "threads")}
        summary["cases"] = [c for c in data.get("cases", []) if c.get("speedup")]
        png = os.path.join(args.out, "results.png")
        bench_report.bar_chart(summary, png)
        print(f"[report] wrote {png}", flush=True)
    except BaseException as exc:  # report.py raises SystemExit when there is no ratio to draw
        print(f"[report] no PNG: {_error(exc)}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("describe", "ceilings", "ops", "train", "modules", "inference", "attention", "loader",
                 "kernels", "userpath"):
        p = sub.add_parser(name)
        p.add_argument("out")
        p.add_argument("--dry-run", action="store_true", help="shrink every size (CPU rehearsal)")
        p.add_argument("--official", default=None, help="local copy of BBYL9413/TDS-CLIP")
    p = sub.add_parser("mark")
    for a in ("out", "step", "status", "rc", "seconds", "box"):
        p.add_argument(a)
    p.add_argument("--doctor", default=None)
    p.add_argument("--junit", default=None)
    p = sub.add_parser("report")
    p.add_argument("out")
    args = parser.parse_args(argv)
    if args.cmd in ("kernels", "userpath"):
        sys.path.insert(0, HERE)
        import steps_kernels

        fn = getattr(steps_kernels, f"cmd_{args.cmd}")
    else:
        fn = globals()[f"cmd_{args.cmd}"]
    try:
        return fn(args)
    except Exception:
        traceback.print_exc()
        try:
            note(args.out, args.cmd, "step failed: " + traceback.format_exc().strip().splitlines()[-1])
        except Exception:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
