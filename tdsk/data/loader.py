"""``build_loader``: the one entry point the trainer and evaluator use.

Output per batch: ``(video, labels)`` with ``video`` float32, CLIP-normalised, on the
requested device:

* train/val: ``Tensor[B, T, M, 3, H, W]`` (train with ``num_sample=2``: B = 2*batch_size,
  sample-major ``[v0s0, v0s1, v1s0, ...]``);
* test: ``Tensor[B, V, T, M, 3, H, W]``, V = crops*clips, crop-major then clip;
* ``labels`` int64 ``[B]``.

Bad samples: at train they are replaced inside the dataset by another sample. At
val/test they are never replaced (that would skew per-class counts and the score): the
undecodable video is left out of its batch, so a batch may hold fewer than
``batch_size`` videos, and a batch whose videos are all bad is not yielded at all;
``loader.skipped`` lists ``(path, reason)`` of every video left out in the last pass
(one entry per skipped item, in order), for the evaluator to report.

Either way the loader warns once per file, keeps a per-epoch :class:`BadSampleReport`
(``loader.bad_samples``), logs it at the end of each epoch, and raises
:class:`BadSampleError` as soon as more than ``max_bad_fraction`` of the epoch's samples
are bad, or at the end of an evaluation pass in which no video at all could be decoded.
(:class:`VideoLoader`, :class:`BadSampleReport` and :class:`BadSampleError` are defined in
:mod:`tdsk.data.base`, which the DALI loader shares; ``decoder: dali`` is dispatched to
:mod:`tdsk.data.dali`, imported only then.)
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from tdsk._logging import log_once
from tdsk.data.base import BadSampleError, BadSampleReport, VideoLoader, available_cores
from tdsk.data.config import DataConfig
from tdsk.data.dataset import EpochSampler, VideoClipDataset, collate_clips
from tdsk.data.lists import VideoRecord, parse_list
from tdsk.data.transforms import normalize

__all__ = ["build_loader", "load_video_clip", "VideoLoader", "BadSampleReport", "BadSampleError", "resolve_decoder",
           "load_records", "dali_available"]


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True


def resolve_decoder(choice: str, device: Union[str, torch.device]) -> str:
    """``auto`` -> ``dali`` when the device is CUDA and ``nvidia.dali`` imports, else ``pyav``."""
    device = torch.device(device)
    if choice == "pyav":
        return "pyav"
    has_dali = dali_available()
    if choice == "dali":
        if not has_dali:
            raise RuntimeError("decoder 'dali' requested but nvidia.dali is not installed "
                               "(pip install nvidia-dali-cuda130)")
        if device.type != "cuda":
            raise RuntimeError(f"decoder 'dali' needs a CUDA device, got {device}")
        return "dali"
    if device.type == "cuda" and has_dali:
        return "dali"
    return "pyav"


def load_records(cfg: DataConfig, split: str) -> List[VideoRecord]:
    """Parse the split's list (entries under ``cfg.root``); 3-column entries shorter than
    ``min_frames`` are dropped at train/val, kept at test (docs/sampling.md §1). The evaluation
    protocols' ``data.class_subset`` and ``data.few_shot`` (train) apply here
    (:mod:`tdsk.data.protocols`)."""
    list_file = cfg.list_for(split)
    if not list_file:
        raise ValueError(f"data config has no {split}_list")
    if not os.path.isabs(list_file) and not os.path.exists(list_file) and cfg.root:
        candidate = os.path.join(cfg.root, list_file)
        if os.path.exists(candidate):
            list_file = candidate
    records = parse_list(list_file, cfg.root, cfg.format, min_frames=cfg.min_frames if split != "test" else 0)
    if cfg.class_subset != "all" or (split == "train" and cfg.few_shot is not None):
        from tdsk.data.protocols import apply_protocols  # noqa: PLC0415

        records = apply_protocols(cfg, records, split, list_file)
    return records


def _worker_init(_worker_id: int) -> None:
    # Workers already run in parallel; intra-op threads would oversubscribe the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the workers ignore it so that the trainer
    # (which handles SIGINT by writing a checkpoint) keeps its loader alive until then.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(data_cfg, split: str, *, batch_size: int, device: Union[str, torch.device] = "cpu",
                 num_workers: Optional[int] = None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 views: Optional[Tuple[int, int]] = None):
    """Build the loader of ``split`` ("train" | "val" | "test") from a ``data:`` section.

    Args:
        data_cfg: the ``data:`` mapping (or a :class:`DataConfig`).
        batch_size: videos per batch on this rank (train yields ``num_sample`` x that many clips).
        device: where batches are delivered (uint8 is copied, then normalised there).
        num_workers: CPU workers (default: ``data.num_workers`` capped at the cores available).
        rank, world_size: DDP sharding (DistributedSampler partition; train shuffled per epoch).
        seed: base seed; item randomness depends only on (seed, rank, epoch, index).
        views: ``(crops, clips)`` for test (default ``data.test_crops``, ``data.test_clips``).

    Returns an iterable with ``__len__``, ``set_epoch(epoch)``, ``bad_samples`` and
    ``skipped`` (val/test: the videos left out of the last pass, see the module docstring).
    ``len()`` counts the batches of a pass without bad files; at val/test a batch of bad
    files only is not yielded, so a pass may yield fewer.
    The decoder (``data.decoder``: auto | dali | pyav) is chosen here and logged once.
    """
    cfg = DataConfig.from_dict(data_cfg)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    device = torch.device(device)
    records = load_records(cfg, split)
    decoder = resolve_decoder(cfg.decoder, device)
    log_once(f"data-decoder-{decoder}",
             f"data: decoding with {'DALI on the GPU' if decoder == 'dali' else 'PyAV/Pillow CPU workers'} "
             f"(decoder={cfg.decoder!r}, device={device})")
    if decoder == "dali":
        from tdsk.data.dali import build_dali_loader

        return build_dali_loader(cfg, split, records, batch_size=batch_size, device=device, rank=rank,
                                 world_size=world_size, seed=seed, views=views, num_workers=num_workers)

    dataset = VideoClipDataset(records, cfg, split, seed=seed, rank=rank, views=views)
    sampler = EpochSampler(len(dataset), shuffle=split == "train", rank=rank, world_size=world_size, seed=seed)
    if num_workers is None:
        num_workers = cfg.num_workers
    num_workers = max(0, min(int(num_workers), available_cores()))
    drop_last = split == "train" and cfg.drop_last and len(sampler) >= batch_size
    if split == "train" and cfg.drop_last and not drop_last:
        log_once(f"data-small-{split}", f"data: {len(sampler)} {split} samples on this rank is fewer than "
                                        f"batch_size={batch_size}; keeping the partial batch", logging.WARNING)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_clips, pin_memory=device.type == "cuda", drop_last=drop_last,
        persistent_workers=num_workers > 0, worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
    )
    return VideoLoader(dataset, sampler, loader, device, cfg, split)


def load_video_clip(path: str, data_cfg=None, views: Optional[Tuple[int, int]] = None,
                    device: Union[str, torch.device] = "cpu", threads: int = 0) -> torch.Tensor:
    """Decode one video file (or JPEG frame folder) into normalised test views.

    For the predict CLI: the test sampling of ``data.dataset`` with ``views = (crops,
    clips)`` (default ``data.test_crops``, ``data.test_clips``) and the test crops.
    Returns float32 ``Tensor[V, T, M, 3, H, W]`` on ``device``, V = crops*clips,
    crop-major. Raises :class:`tdsk.data.DecodeError` when the file cannot be decoded,
    and for a frame folder missing a frame file (as training does: the reason names the
    first missing file; a gap never silently shortens the video).
    """
    from tdsk.data.decoders import check_jpeg_frames
    from tdsk.data.dataset import decode_record

    cfg = DataConfig.from_dict(data_cfg)
    crops, clips = views if views is not None else (cfg.test_crops, cfg.test_clips)
    if os.path.isdir(path):
        record = VideoRecord(path, 0, check_jpeg_frames(path, cfg.template))
    else:
        record = VideoRecord(path, 0, None)
    dataset = VideoClipDataset([record], cfg, "test", views=(crops, clips))
    frames, _ = decode_record(record, cfg, "test", num_clips=clips, threads=threads)
    t, m = cfg.num_segments, cfg.num_local
    views_list = [dataset.transform(c) for c in frames.reshape(clips, t * m, *frames.shape[1:])]
    video = torch.stack(views_list, dim=1).reshape(crops * clips, t, m, 3, cfg.input_size, cfg.input_size)
    return normalize(video.to(torch.device(device)), cfg.mean, cfg.std)
