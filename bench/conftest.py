"""Shared benchmark plumbing.

Every benchmark records ``op``, ``case``, ``mode``, ``provider`` and the bytes that
must move in ``benchmark.extra_info``. CPU rows are timed by pytest-benchmark; CUDA rows
by ``triton.testing.do_bench`` (median), with the peak memory of one call next to the
time; after the run we print, per case, the median
time, effective GB/s (bytes that must move / median time), and the speed-up of
``tdsk`` over every other provider *measured side by side in the same run*.
Benchmarks never assert timings.

``--tdsk-summary PATH`` also writes that summary as JSON (``bench/report.py`` turns
it, or pytest-benchmark's ``--benchmark-json`` output, into a table and a PNG).
"""
import json
import os
import platform
from collections import defaultdict

import pytest
import torch

from benchlib import cuda_median, cuda_peak_bytes, sync

_ROWS = []


def pytest_addoption(parser):
    parser.addoption("--tdsk-summary", default=None, help="write the tdsk ratio summary as JSON to this path")


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine()}-{os.cpu_count()}threads"


@pytest.fixture
def record(benchmark):
    """``record(fn, op=..., case=..., mode=..., provider=..., bytes_moved=...)`` runs and logs one benchmark."""

    def run(fn, *, op, case, mode, provider, bytes_moved=None, device="cpu", rounds=None, **extra):
        def timed():
            out = fn()
            sync(device)
            return out

        timed()  # warm-up: compile, caches, allocator
        info = dict(op=op, case=case, mode=mode, provider=provider, device=str(device), **extra)
        if torch.device(device).type == "cuda":
            median, info["peak_memory_bytes"], info["timer"] = _cuda_median(fn, benchmark)
        else:
            if rounds is None:
                benchmark(timed)
            else:
                benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
            median = benchmark.stats.stats.median
            info["timer"] = "pytest-benchmark"
        info["median_s"] = median
        if bytes_moved:
            info["bytes_moved"] = int(bytes_moved)
            info["gb_per_s"] = bytes_moved / median / 1e9
        benchmark.extra_info.update(info)
        _ROWS.append(info)
        return median

    return run


def _cuda_median(fn, benchmark):
    """CUDA rows: ``triton.testing.do_bench`` (median over its own warm-up and repetitions,
    timed with CUDA events, L2 cleared between runs) and the peak memory of one call.

    A pytest-benchmark loop around a few-microsecond kernel plus a synchronize would time
    Python, not the kernel. pytest-benchmark still runs one round so the row is a
    benchmark (``--benchmark-only``); its number is not reported.
    """
    median = cuda_median(fn)
    peak = cuda_peak_bytes(fn)
    benchmark.pedantic(fn, rounds=1, iterations=1)
    return median, peak, "triton.testing.do_bench"


def _summary():
    cases = defaultdict(dict)
    for row in _ROWS:
        cases[(row["op"], row["case"], row["mode"], row["device"])][row["provider"]] = row
    out = []
    for (op, case, mode, device), providers in sorted(cases.items()):
        entry = {"op": op, "case": case, "mode": mode, "device": device, "providers": providers, "speedup": {}}
        if "tdsk" in providers:
            for name, row in providers.items():
                if name == "copy":
                    # same bytes moved: the fraction of the measured copy bandwidth tdsk reaches
                    entry["pct_of_copy_bandwidth"] = 100.0 * row["median_s"] / providers["tdsk"]["median_s"]
                elif name != "tdsk":
                    entry["speedup"][name] = row["median_s"] / providers["tdsk"]["median_s"]
        out.append(entry)
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section(f"tdsk summary ({machine_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for entry in _summary():
        tr.write_line(f"{entry['op']} | {entry['case']} | {entry['mode']} | {entry['device']}")
        for name, row in sorted(entry["providers"].items()):
            gbps = f"{row['gb_per_s']:8.2f} GB/s" if "gb_per_s" in row else ""
            ratio = entry["speedup"].get(name)
            ratio_s = f"   tdsk is {ratio:5.2f}x faster" if ratio is not None else ""
            extra = {k: v for k, v in row.items() if k.startswith("pct_") or k.endswith("_per_clip")
                     or k.endswith("clips_per_s") or k == "peak_memory_bytes"}
            extra_s = "  " + " ".join(f"{k}={v:.3g}" for k, v in extra.items()) if extra else ""
            tr.write_line(f"    {name:>22}: {row['median_s'] * 1e6:12.1f} us {gbps}{ratio_s}{extra_s}")
        if "pct_of_copy_bandwidth" in entry:
            tr.write_line(f"    {'':>22}  tdsk reaches {entry['pct_of_copy_bandwidth']:.0f}% of the copy bandwidth")
    path = config.getoption("--tdsk-summary")
    if path:
        payload = {
            "machine": machine_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
            "cases": _summary(),
        }
        try:
            import triton

            payload["triton"] = triton.__version__
        except Exception:
            payload["triton"] = None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
        tr.write_line(f"tdsk summary written to {path}")
