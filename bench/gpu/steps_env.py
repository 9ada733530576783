"""Device-run steps ``describe`` (versions, devices; a fresh results file) and ``ceilings``
(copy bandwidth, bf16 matmul rate)."""
from __future__ import annotations

import os
import platform
import time

from runlib import bench, device_of, lazy_torch, load, save, update


# ---------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------

def cmd_describe(args) -> int:
    import logging

    torch = lazy_torch()
    from tdsk.cli import doctor

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
    torch = lazy_torch()
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
    torch = lazy_torch()
    nbytes = (8 << 20) if dry else (1 << 30)
    src = torch.empty(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / bench(lambda: dst.copy_(src), dev, dry) / 1e9
