"""Device-run steps ``attention`` (side attention: xformers vs SDPA) and ``loader`` (DALI vs PyAV)."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Dict

from runlib import bench, device_of, error_text, lazy_torch, note, sync, update


# ---------------------------------------------------------------------------
# extras: side attention, loader
# ---------------------------------------------------------------------------

def cmd_attention(args) -> int:
    torch = lazy_torch()
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
                row.setdefault("errors", {})[backend] = error_text(exc)
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
                result["rows"][key] = {"decoder": decoder, "codec": ext, "error": error_text(exc)}
                print(f"[loader] {key}: {error_text(exc)}", flush=True)
            update(args.out, "loader", result)
    return 0
