"""The device run's plumbing (docs/gpu-run.md): the results file every step adds to, timing,
and the model setting the model steps share. Timing and op shapes shared with the pytest
benchmarks come from ``bench/benchlib.py``."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from benchlib import CLIP_MEAN, CLIP_STD, cuda_median, sync  # noqa: E402,F401  (re-exported for the steps)

RESULTS = "results.json"


# ---------------------------------------------------------------------------
# the results file (one JSON, rewritten atomically after every row)
# ---------------------------------------------------------------------------

def load(out: str) -> Dict:
    path = os.path.join(out, RESULTS)
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def clean(value):
    """JSON has no NaN/inf: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def save(out: str, data: Dict) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RESULTS)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(clean(data), fh, indent=1, default=str)
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

def lazy_torch():
    import torch

    return torch


def bench(fn: Callable, dev, dry: bool = False) -> float:
    """Median seconds of ``fn()``: ``triton.testing.do_bench`` on CUDA, wall clock on a CPU."""
    if dev.type == "cuda":
        return cuda_median(fn)
    fn()  # warm-up
    times, deadline = [], time.perf_counter() + (0.3 if dry else 2.0)
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_steps(step: Callable, dev, warmup: int, steps: int) -> List[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` (CUDA events on a GPU)."""
    torch = lazy_torch()
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
    torch = lazy_torch()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def device_of(dry: bool):
    torch = lazy_torch()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def raise_recompile_limits() -> None:
    torch = lazy_torch()
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


def error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"



def model_setting(dry: bool) -> Dict:
    if dry:
        return {"config": "tiny", "batch": 2, "videos": 2, "warmup": 1, "steps": 2}
    return {"config": "ssv1_b16", "batch": 32, "videos": 8, "warmup": 3, "steps": 10}


def build_tdsk(setting, dev):
    torch = lazy_torch()
    from tdsk.models import build_model

    torch.manual_seed(0)
    return build_model(setting["config"], clip_pretrained=None).to(dev)


def video_for(model, batch, dev):
    torch = lazy_torch()
    s = model.encoder.image_size
    gen = torch.Generator(device=dev).manual_seed(1)
    return torch.randn(batch, model.num_segments, model.num_local, 3, s, s, device=dev, generator=gen)
