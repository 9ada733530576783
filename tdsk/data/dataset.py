"""The CPU dataset: list records -> sampled indices -> decoded frames -> augmented clips.

Items are requested as ``(index, epoch)`` pairs (see :class:`EpochSampler`), so the
randomness of an item depends only on ``(seed, rank, epoch, index)`` and not on which
worker runs it, and persistent workers need no epoch broadcast.

A training sample that cannot be decoded is replaced by another one drawn at random
from the list. At val/test nothing is replaced (that would skew the per-class counts
and the score): the item comes back *skipped* (``video`` None) and :func:`collate_clips`
leaves it out of the batch. Every failure travels back with the item as
``(path, reason)`` so the main process can warn once per file, count per epoch and list
what evaluation skipped (:mod:`tdsk.data.loader`).

Those rules (generators, frame indices, replacement, augmentation) are defined once, in
:mod:`tdsk.data.items`, for this dataset and the DALI loader alike; this module decodes.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from tdsk.data.config import DataConfig
from tdsk.data.decoders import PyAVVideo, check_jpeg_frames, read_jpeg_frames
from tdsk.data.items import MAX_REPLACEMENTS, ItemPlanner, frame_indices  # noqa: F401  (MAX_REPLACEMENTS: re-exported)
from tdsk.data.lists import VideoRecord

__all__ = ["VideoClipDataset", "EpochSampler", "collate_clips", "decode_record", "skipped_item"]


def _decode(record: VideoRecord, cfg: DataConfig, pick, threads: int = 1) -> np.ndarray:
    """Frames ``uint8[K*T*M, H, W, 3]`` of ``record`` at ``pick(num_frames)`` (``int64[K, T, M]``)."""
    if record.is_frames:
        # every frame file 1..num_frames must be there, not only the sampled ones
        indices = pick(check_jpeg_frames(record.path, cfg.template, record.num_frames))
        return read_jpeg_frames(record.path, indices.reshape(-1), cfg.template)
    with PyAVVideo(record.path, threads=threads) as video:
        return video.get_frames(pick(video.num_frames).reshape(-1))


def decode_record(record: VideoRecord, cfg: DataConfig, mode: str, num_clips: int = 1,
                  rng: Optional[np.random.Generator] = None, threads: int = 1
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Sample and decode one record.

    Returns ``(frames uint8[K*T*M, H, W, 3], indices int64[K, T, M])`` with K = ``num_clips``
    (test) or 1; frames are in (clip, segment, local) order. Raises :class:`DecodeError`.
    """
    picked = []

    def pick(num_frames: int) -> np.ndarray:
        picked.append(frame_indices(cfg, mode, num_frames, num_clips=num_clips, rng=rng, path=record.path))
        return picked[-1]

    frames = _decode(record, cfg, pick, threads)
    return frames, picked[-1]


class VideoClipDataset(Dataset):
    """Map-style dataset over parsed list records.

    ``dataset[(index, epoch)]`` (or ``dataset[index]``, epoch 0) returns a dict:

    * train: ``video uint8[S, T, M, 3, H, W]`` (S = ``num_sample``), ``label int64[S]``
      (flip label swap applied per augmented copy);
    * val: ``video uint8[T, M, 3, H, W]``, ``label int64[]``;
    * test: ``video uint8[V, T, M, 3, H, W]`` (V = crops*clips, crop-major), ``label int64[]``;
    * ``bad``: list of ``(path, reason)`` for every failed attempt behind this item;
    * ``index``: the list index finally used;
    * ``skipped``: val/test only: ``[(path, reason)]`` when the item's own video could not
      be decoded (then ``video`` and ``label`` are None: evaluation never substitutes
      another video), else ``[]``.

    Which frames, which augmentation draws and which replacement an item gets is decided
    by its :class:`~tdsk.data.items.ItemPlanner` (``self.items``), shared with the DALI
    loader; this class only decodes.
    """

    def __init__(self, records: Sequence[VideoRecord], cfg: DataConfig, split: str, *, seed: int = 0,
                 rank: int = 0, views: Optional[Tuple[int, int]] = None):
        self.items = ItemPlanner(records, cfg, split, seed=seed, rank=rank, views=views)
        self.records = self.items.records
        self.cfg = cfg
        self.split = split
        self.seed, self.rank = self.items.seed, self.items.rank
        self.crops, self.clips = self.items.crops, self.items.clips
        self.transform = self.items.transform

    def __len__(self) -> int:
        return len(self.records)

    def augment(self, frames, label: int, py_rng):
        """Decoded frames (numpy ``uint8[F, H, W, 3]`` or a tensor ``uint8[F, 3, H, W]`` on any
        device; F = K*T*M in (clip, segment, local) order) -> ``(video, label)`` of this split."""
        return self.items.augment(frames, label, py_rng)

    def _read(self, record: VideoRecord, pick) -> np.ndarray:
        return _decode(record, self.cfg, pick, self.cfg.decode_threads)

    def __getitem__(self, item) -> dict:
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        plan = self.items.plan(index, epoch, self._read)
        if plan.skipped:  # val/test: the item's own video, or a skipped item; never a replacement
            return skipped_item(plan.index, *plan.bad[-1])
        video, label = self.augment(plan.payload, plan.record.label, plan.py_rng)
        item = {"video": video, "label": label, "bad": plan.bad, "index": plan.index}
        if self.split != "train":
            item["skipped"] = []
        return item


def skipped_item(index: int, path: str, reason: str) -> dict:
    """The item of an evaluation sample that could not be decoded (left out of its batch)."""
    return {"video": None, "label": None, "bad": [(path, reason)], "index": index, "skipped": [(path, reason)]}


class EpochSampler(Sampler):
    """Shards (and at train shuffles) the dataset per rank; yields ``(index, epoch)``.

    Training (``pad=True``, the default when shuffling) uses the partition of
    ``torch.utils.data.DistributedSampler``: padded by repeating indices so every rank
    runs the same number of steps (DDP needs that). Evaluation (``pad=False``, the
    default without shuffling) gives rank ``r`` the items ``r, r + W, r + 2W, ...``: every
    item exactly once over all ranks, so no video is counted twice; ranks may differ
    by one item.

    :meth:`skip` makes the next pass start ``n`` items into the rank's share (a run
    resumed from a mid-epoch checkpoint); ``len()`` stays the full share.
    """

    def __init__(self, size: int, shuffle: bool, rank: int = 0, world_size: int = 1, seed: int = 0,
                 pad: Optional[bool] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.size, self.shuffle = int(size), bool(shuffle)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.pad = self.shuffle if pad is None else bool(pad)
        self.epoch = 0
        self.start = 0
        if self.pad:
            self.num_samples = -(-self.size // self.world_size)
        else:
            self.num_samples = len(range(self.rank, self.size, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def skip(self, items: int) -> None:
        """Start the next pass ``items`` items into this rank's share."""
        self.start = max(0, int(items))

    def indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if not self.pad:
            return order[self.rank::self.world_size][self.start:]
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size][self.start:]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter([(i, self.epoch) for i in self.indices()])

    def __len__(self) -> int:
        return self.num_samples


def collate_clips(items: List[dict]) -> dict:
    """Stack items; train copies are flattened sample-major ``[v0s0, v0s1, v1s0, ...]`` (docs/sampling.md §3).

    Skipped (undecodable evaluation) items are left out, so a batch may hold fewer than
    ``batch_size`` videos; when every item was skipped, ``video`` and ``label`` are None
    (the loader yields nothing for it). ``skipped`` lists their ``(path, reason)``.
    """
    kept = [it for it in items if it["video"] is not None]
    bad = [b for it in items for b in it["bad"]]
    skipped = [s for it in items for s in it.get("skipped", ())]
    if not kept:
        return {"video": None, "label": None, "bad": bad, "index": [], "skipped": skipped}
    video = torch.stack([it["video"] for it in kept])
    label = torch.stack([it["label"] for it in kept])
    if label.dim() == 2:  # train: [B, S, ...] -> [B*S, ...]
        video = video.flatten(0, 1)
        label = label.flatten(0, 1)
    return {"video": video, "label": label, "bad": bad, "index": [it["index"] for it in kept], "skipped": skipped}
