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
"""
from __future__ import annotations

import os
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from tdsk.data.config import DataConfig
from tdsk.data.decoders import DecodeError, PyAVVideo, check_jpeg_frames, read_jpeg_frames
from tdsk.data.lists import VideoRecord
from tdsk.data.sampling import sample_indices
from tdsk.data.transforms import EvalTransform, TrainTransform

__all__ = ["VideoClipDataset", "EpochSampler", "collate_clips", "decode_record", "skipped_item"]

MAX_REPLACEMENTS = 20


def decode_record(record: VideoRecord, cfg: DataConfig, mode: str, num_clips: int = 1,
                  rng: Optional[np.random.Generator] = None, threads: int = 1
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Sample and decode one record.

    Returns ``(frames uint8[K*T*M, H, W, 3], indices int64[K, T, M])`` with K = ``num_clips``
    (test) or 1; frames are in (clip, segment, local) order. Raises :class:`DecodeError`.
    """
    t, m = cfg.num_segments, cfg.num_local
    wrap = cfg.kinetics_wrap and cfg.dataset == "kinetics"

    def indices_for(num_frames: int) -> np.ndarray:
        if num_frames < 1:
            raise DecodeError(record.path, "zero frames")
        clips = range(num_clips) if mode == "test" else [0]
        return np.stack([sample_indices(num_frames, t, m, mode, k, num_clips, cfg.dataset, rng,
                                        wrap_negative=wrap) for k in clips])

    if record.is_frames:
        # every frame file 1..num_frames must be there, not only the sampled ones
        indices = indices_for(check_jpeg_frames(record.path, cfg.template, record.num_frames))
        return read_jpeg_frames(record.path, indices.reshape(-1), cfg.template), indices
    with PyAVVideo(record.path, threads=threads) as video:
        indices = indices_for(video.num_frames)
        return video.get_frames(indices.reshape(-1)), indices


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
    """

    def __init__(self, records: Sequence[VideoRecord], cfg: DataConfig, split: str, *, seed: int = 0,
                 rank: int = 0, views: Optional[Tuple[int, int]] = None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if not records:
            raise ValueError(f"no {split} samples (empty list after filtering)")
        self.records = list(records)
        self.cfg = cfg
        self.split = split
        self.seed = int(seed)
        self.rank = int(rank)
        self.crops, self.clips = views if views is not None else (cfg.test_crops, cfg.test_clips)
        if split == "train":
            self.transform = TrainTransform(cfg.input_size, cfg.resize_size, cfg.rand_augment,
                                            flip=cfg.flip != "none", grayscale_p=cfg.grayscale_p)
        else:
            self.transform = EvalTransform(cfg.input_size, cfg.resize_size, crops=self.crops if split == "test" else 1)
        self._swap = cfg.label_swap if cfg.flip == "sth" else {}
        self._known_bad: Dict[int, str] = {}  # per process (per worker): do not decode a bad file twice

    def __len__(self) -> int:
        return len(self.records)

    def _rngs(self, index: int, epoch: int, attempt: int) -> Tuple[random.Random, np.random.Generator]:
        seq = np.random.SeedSequence([self.seed, self.rank, epoch, index, attempt])
        a, b = seq.generate_state(2, dtype=np.uint64)
        return random.Random(int(a)), np.random.default_rng(int(b))

    def _load(self, index: int, epoch: int, attempt: int):
        record = self.records[index]
        py_rng, np_rng = self._rngs(index, epoch, attempt)
        frames, _ = decode_record(record, self.cfg, self.split, num_clips=self.clips, rng=np_rng,
                                  threads=self.cfg.decode_threads)
        return self.augment(frames, record.label, py_rng)

    def augment(self, frames, label: int, py_rng: random.Random):
        """Decoded frames (numpy ``uint8[F, H, W, 3]`` or a tensor ``uint8[F, 3, H, W]`` on any
        device; F = K*T*M in (clip, segment, local) order) -> ``(video, label)`` of this split."""
        cfg = self.cfg
        t, m = cfg.num_segments, cfg.num_local
        mode = self.split
        record_label = label
        if mode == "train":
            clips, labels = [], []
            for _ in range(cfg.num_sample):
                clip, flipped = self.transform(frames, py_rng)
                clips.append(clip.view(t, m, *clip.shape[1:]))
                labels.append(self._swap.get(record_label, record_label) if flipped else record_label)
            return torch.stack(clips), torch.tensor(labels, dtype=torch.int64)
        if mode == "val":
            clip = self.transform(frames)[0]
            return clip.view(t, m, *clip.shape[1:]), torch.tensor(record_label, dtype=torch.int64)
        k = self.clips
        views = []
        for clip in frames.reshape(k, t * m, *frames.shape[1:]):  # numpy [H,W,3] or tensor [3,H,W] frames
            views.append(self.transform(clip))  # [crops, T*M, 3, S, S]
        video = torch.stack(views, dim=1)  # [crops, clips, T*M, 3, S, S]: crop-major, then clip
        video = video.reshape(self.crops * k, t, m, *video.shape[-3:])
        return video, torch.tensor(record_label, dtype=torch.int64)

    def __getitem__(self, item) -> dict:
        index, epoch = item if isinstance(item, tuple) else (int(item), 0)
        if self.split != "train":
            return self._eval_item(index, epoch)
        bad: List[Tuple[str, str]] = []
        candidate = index
        draw = random.Random(int(np.random.SeedSequence([self.seed, self.rank, epoch, index, 7919]).generate_state(1)[0]))
        for attempt in range(MAX_REPLACEMENTS + 1):
            if candidate in self._known_bad:
                bad.append((self.records[candidate].path, self._known_bad[candidate]))
            else:
                try:
                    video, label = self._load(candidate, epoch, attempt)
                    return {"video": video, "label": label, "bad": bad, "index": candidate}
                except DecodeError as exc:
                    reason = exc.reason if exc.path == self.records[candidate].path else str(exc)
                    self._known_bad[candidate] = reason
                    bad.append((self.records[candidate].path, reason))
            # Replacement: another sample drawn at random, preferring ones not known bad.
            for _ in range(8):
                candidate = draw.randrange(len(self.records))
                if candidate not in self._known_bad:
                    break
        listed = "\n  ".join(f"{p}: {r}" for p, r in bad[:10])
        raise RuntimeError(f"{len(bad)} consecutive bad samples while loading item {index} of the "
                           f"{self.split} list; first offenders:\n  {listed}")

    def _eval_item(self, index: int, epoch: int) -> dict:
        """Val/test: the item's own video, or a skipped item; never a replacement."""
        path = self.records[index].path
        if index not in self._known_bad:
            try:
                video, label = self._load(index, epoch, 0)
                return {"video": video, "label": label, "bad": [], "index": index, "skipped": []}
            except DecodeError as exc:
                self._known_bad[index] = exc.reason if exc.path == path else str(exc)
        return skipped_item(index, path, self._known_bad[index])


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
    """Stack items; train copies are flattened sample-major ``[v0s0, v0s1, v1s0, ...]`` (spec 1.4).

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
