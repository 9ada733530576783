"""Timeline throughput: frozen-tap reuse vs naive per-window inference
(``pytest bench/bench_timeline.py --benchmark-only -s``).

TDS-CLIP B/16 (``ssv1_b16``, ``clip_pretrained=None``, 224 px, eval, fp32, CPU), windows of
8 segments x 5 frames sliding by one segment (the default stride of :func:`tdsk.timeline.timeline`),
fed frame by frame through :class:`tdsk.timeline.TimelineEngine` (per-frame preprocessing
included; no decoding: the frames are random ``uint8`` 224x224 arrays at 12 fps, spacing 6):

* ``naive``: every window runs the whole model (``reuse=False``): 8 frozen-CLIP frames + the
  side network per window;
* ``reuse``: the frozen taps of each centre frame are computed once and kept for the windows
  that share it: per window 1 new frozen-CLIP frame + the side network.

Steady state: each round first primes the engine with the first window (untimed, in the
benchmark's setup), then times ``TDSK_BENCH_WINDOWS`` (default 4) further windows; one round
(``TDSK_BENCH_ROUNDS``, default 1). clips/s = windows / time. The first window's own time is
reported as ``cold_first_window_s``. The load average (``os.getloadavg``) is recorded before and
after. The logits of both paths are compared (max abs difference printed, not asserted: that is
``tests/test_timeline.py``'s job). Nothing here asserts a timing. With ``--tdsk-summary PATH.json``
the report is also written, as Markdown naming the machine, to ``PATH-timeline.md`` (``PATH.md``
when PATH already ends in ``-timeline``: ``bench/results/<machine>-timeline.md``).
"""
import os
import platform
import time

import numpy as np
import pytest
import torch

from benchlib import write_side_report
from tdsk.models import build_model
from tdsk.timeline import TimelineEngine

WINDOWS = int(os.environ.get("TDSK_BENCH_WINDOWS", "4"))
ROUNDS = int(os.environ.get("TDSK_BENCH_ROUNDS", "1"))
FPS = 12.0
_RESULTS = {}


@pytest.fixture(scope="module")
def state(request):
    torch.manual_seed(0)
    model = build_model("ssv1_b16", clip_pretrained=None).eval()
    spacing = 6
    n = spacing * (8 + WINDOWS) + 6
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]
    _RESULTS.update(load_before=os.getloadavg(), started=time.strftime("%Y-%m-%d %H:%M"))
    yield {"model": model, "frames": frames}
    _RESULTS["load_after"] = os.getloadavg()
    print("\n" + report())
    write_side_report(request, markdown(), "timeline")


def _primed(model, frames, reuse):
    eng = TimelineEngine(model, FPS, stride=1, reuse=reuse, keep_logits=True)
    it = iter(frames)
    start = time.perf_counter()
    with torch.no_grad():
        while True:
            rows = eng.push(next(it))
            if rows:
                break
    _RESULTS.setdefault("cold", {})[reuse] = time.perf_counter() - start
    return eng, it, rows


@pytest.mark.parametrize("provider", ["naive", "reuse"])
def test_timeline_windows(benchmark, state, provider):
    reuse = provider == "reuse"
    model, frames = state["model"], state["frames"]
    out = {}

    def setup():
        eng, it, first = _primed(model, frames, reuse)
        out["rows"] = list(first)
        return (eng, it), {}

    def run(eng, it):
        with torch.no_grad():
            while len(out["rows"]) < WINDOWS + 1:
                out["rows"].extend(eng.push(next(it)))

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    info = {"provider": provider, "windows": WINDOWS, "median_s": median, "clips_per_s": WINDOWS / median,
            "cold_first_window_s": _RESULTS["cold"][reuse], "threads": torch.get_num_threads()}
    benchmark.extra_info.update(info)
    _RESULTS[provider] = info
    _RESULTS.setdefault("logits", {})[provider] = torch.stack([r["logits"] for r in out["rows"]])


def report() -> str:
    lines = [f"timeline B/16 8x5x224, stride 1 segment, fp32 CPU, {torch.get_num_threads()} threads, "
             f"{WINDOWS} windows after a primed first one; load average before {_RESULTS.get('load_before')}, "
             f"after {_RESULTS.get('load_after')}"]
    for p in ("naive", "reuse"):
        if p in _RESULTS:
            r = _RESULTS[p]
            lines.append(f"  {p:>6}: {r['clips_per_s']:.3f} clips/s ({r['median_s']:.2f} s for {r['windows']} windows; "
                         f"first window {r['cold_first_window_s']:.2f} s)")
    if "naive" in _RESULTS and "reuse" in _RESULTS:
        lines.append(f"  reuse / naive: {_RESULTS['reuse']['clips_per_s'] / _RESULTS['naive']['clips_per_s']:.2f}x")
        lg = _RESULTS["logits"]
        lines.append(f"  max |logit reuse - naive| = {(lg['reuse'] - lg['naive']).abs().max().item():.2e}")
    return "\n".join(lines)


def markdown() -> str:
    """The report as Markdown, with the machine named (for ``bench/results/``)."""
    from tdsk.cli.doctor import cpu_name

    machine = (f"cpu-{platform.machine()}-{os.cpu_count()}threads" if not torch.cuda.is_available()
               else torch.cuda.get_device_name(0))
    load = ", ".join(f"{v:.2f}" for v in _RESULTS["load_before"]) if _RESULTS.get("load_before") else "n/a"
    load_after = ", ".join(f"{v:.2f}" for v in _RESULTS["load_after"]) if _RESULTS.get("load_after") else "n/a"
    lines = [f"# Timeline inference: frozen-tap reuse vs per-window ({machine})", "",
             f"Command: `pytest bench/bench_timeline.py --benchmark-only -s --tdsk-summary <path>.json`, "
             f"{_RESULTS.get('started')}. Machine: **{machine}** ({cpu_name()}), torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads. TDS-CLIP B/16 (`ssv1_b16`, random weights), 8 segments x 5 "
             f"frames at 224, fp32 eval, stride one segment, frames fed one by one through "
             f"`tdsk.timeline.TimelineEngine` (preprocessing included, no decoding); {WINDOWS} windows timed "
             f"after a primed first one, {ROUNDS} round(s), both rows in this one run. Load average (1, 5, 15 "
             f"min) before: {load}, after: {load_after}.", "",
             "| path | what runs per window | clips/s | time for the windows | first window | vs naive |",
             "|---|---|---:|---:|---:|---:|"]
    what = {"naive": "whole model (8 frozen-CLIP frames + side network)",
            "reuse": "1 new frozen-CLIP frame + side network"}
    for p in ("naive", "reuse"):
        if p in _RESULTS:
            r = _RESULTS[p]
            ratio = (f"{r['clips_per_s'] / _RESULTS['naive']['clips_per_s']:.2f}x" if "naive" in _RESULTS else "")
            lines.append(f"| {p} | {what[p]} | {r['clips_per_s']:.3f} | {r['median_s']:.2f} s | "
                         f"{r['cold_first_window_s']:.2f} s | {ratio} |")
    if "logits" in _RESULTS and len(_RESULTS["logits"]) == 2:
        lg = _RESULTS["logits"]
        lines += ["", f"Max |logit reuse - naive| over the {WINDOWS + 1} windows: "
                      f"{(lg['reuse'] - lg['naive']).abs().max().item():.2e} (the equality itself is tested in "
                      "`tests/test_timeline.py`)."]
    return "\n".join(lines) + "\n"
