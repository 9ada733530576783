"""Item ``index`` of epoch ``epoch``: the one definition every loader shares.

An item's randomness is a function of ``(seed, rank, epoch, index)`` alone (see
:func:`item_seed`), never of the worker or thread that makes it. :class:`ItemPlanner`
says, for one split of a list, everything about an item except how its pixels are
obtained:

* its generators (:meth:`ItemPlanner.generators`: a ``random.Random`` for the
  augmentation, a numpy ``Generator`` for the frame indices; one pair per attempt);
* its frame indices (:meth:`ItemPlanner.indices`: :func:`sample_indices` for the
  record's frame count, per split and test clip);
* bad samples (:meth:`ItemPlanner.plan`): at train a sample that cannot be read is
  replaced by another one drawn at random from the list (:meth:`ItemPlanner.replacement`);
  at val/test it is never replaced, the item comes back skipped;
* the augmentation of the decoded frames (:meth:`ItemPlanner.augment`; the train
  copies and label swap are :func:`augment_copies`, which the demo's in-memory loader
  uses too).

The caller passes the reading step as a callback: the CPU dataset decodes the frames
(:class:`~tdsk.data.dataset.VideoClipDataset`), the DALI loader only reads the encoded
bytes and decodes a whole batch later (:mod:`tdsk.data.dali`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from tdsk.data.config import DataConfig
from tdsk.data.decoders import DecodeError
from tdsk.data.lists import VideoRecord
from tdsk.data.sampling import sample_indices
from tdsk.data.transforms import EvalTransform, TrainTransform

__all__ = ["ItemPlanner", "ItemPlan", "item_seed", "frame_indices", "augment_copies", "MAX_REPLACEMENTS"]

#: consecutive bad samples behind one training item before the epoch stops with an error
MAX_REPLACEMENTS = 20
#: the last ``item_seed`` word of an item's replacement-candidate draw (attempts use 0..MAX_REPLACEMENTS)
_REPLACEMENT_SALT = 7919

Bad = List[Tuple[str, str]]
#: ``load(record, pick) -> payload``: reads ``record``; calls ``pick(num_frames)`` once, which
#: returns the item's frame indices ``int64[K, T, M]``; raises :class:`DecodeError`
Loader = Callable[[VideoRecord, Callable[[int], np.ndarray]], Any]


def item_seed(seed: int, rank: int, epoch: int, index: int, *salt: int) -> np.random.SeedSequence:
    """The entropy behind item ``index`` of ``epoch`` on ``rank``; ``salt`` tells its uses apart."""
    return np.random.SeedSequence([seed, rank, epoch, index, *salt])


def frame_indices(cfg: DataConfig, split: str, num_frames: int, *, num_clips: int = 1,
                  rng: Optional[np.random.Generator] = None, path: str = "") -> np.ndarray:
    """``int64[K, T, M]`` frame indices of a video of ``num_frames`` frames (K = ``num_clips``
    at test, else 1), by :func:`sample_indices`; zero frames is a :class:`DecodeError` of ``path``."""
    if num_frames < 1:
        raise DecodeError(path, "zero frames")
    wrap = cfg.kinetics_wrap and cfg.dataset == "kinetics"
    clips = range(num_clips) if split == "test" else [0]
    return np.stack([sample_indices(num_frames, cfg.num_segments, cfg.num_local, split, k, num_clips, cfg.dataset,
                                    rng, wrap_negative=wrap) for k in clips])


def augment_copies(frames, label: int, rng, transform: Callable, copies: int, swap: Mapping[int, int],
                   segments: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Repeated augmentation (docs/sampling.md §3): ``copies`` draws of ``transform(frames, rng)
    -> (clip[T*M, ...], flipped)``, each flipped copy's label swapped by ``swap``.

    Returns ``(video[copies, T, M, ...], labels int64[copies])``; ``segments`` = ``(T, M)``.
    """
    t, m = segments
    clips, labels = [], []
    for _ in range(copies):
        clip, flipped = transform(frames, rng)
        clips.append(clip.view(t, m, *clip.shape[1:]))
        labels.append(swap.get(label, label) if flipped else label)
    return torch.stack(clips), torch.tensor(labels, dtype=torch.int64)


@dataclass
class ItemPlan:
    """What :meth:`ItemPlanner.plan` decided for one item.

    ``index``: the list index finally used (a replacement at train, else ``requested``);
    ``payload``: what the loader callback returned; ``indices``: ``int64[K, T, M]``;
    ``bad``: ``(path, reason)`` of every failed attempt behind the item; ``skipped``
    (val/test): the item's own video could not be read (``bad[-1]`` says why), there is
    nothing to decode.
    """

    requested: int
    index: int
    epoch: int
    record: VideoRecord
    attempt: int = 0
    indices: Optional[np.ndarray] = None
    payload: Any = None
    py_rng: Optional[random.Random] = None
    bad: Bad = field(default_factory=list)
    skipped: bool = False


class ItemPlanner:
    """Items of one split of a list: generators, frame indices, bad samples, augmentation.

    ``known_bad`` (index -> reason) is per process (per loader worker): the files that failed
    here, for the report. At val/test a known-bad file is not read twice (its frame indices
    are the same every time, so is its failure); at train it is read again, because a
    failure can depend on the frames asked for (a truncated file fails only for frames past
    the cut), and what an item trains on must not depend on what this worker (or thread)
    happened to read before. ``views = (crops, clips)`` are the test views.
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
        self.swap: Dict[int, int] = cfg.label_swap if cfg.flip == "sth" else {}
        self.known_bad: Dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_clips(self) -> int:
        """Temporal clips per item: ``clips`` at test, else 1."""
        return self.clips if self.split == "test" else 1

    # -- randomness ------------------------------------------------------------------------------
    def generators(self, index: int, epoch: int, attempt: int = 0) -> Tuple[random.Random, np.random.Generator]:
        """``(augmentation rng, frame-index rng)`` of attempt ``attempt`` at list index ``index``."""
        a, b = item_seed(self.seed, self.rank, epoch, index, attempt).generate_state(2, dtype=np.uint64)
        return random.Random(int(a)), np.random.default_rng(int(b))

    def replacement_draw(self, index: int, epoch: int) -> random.Random:
        """The generator of item ``index``'s replacement candidates (train)."""
        return random.Random(int(item_seed(self.seed, self.rank, epoch, index, _REPLACEMENT_SALT).generate_state(1)[0]))

    def replacement(self, draw: random.Random) -> int:
        """The next replacement candidate, drawn at random. It does not look at ``known_bad``:
        which item replaces a bad one must not depend on what this worker happened to see
        before, or a resumed run and another ``num_workers`` would train on other items."""
        return draw.randrange(len(self.records))

    def indices(self, num_frames: int, rng: Optional[np.random.Generator], path: str = "") -> np.ndarray:
        """``int64[K, T, M]`` frame indices for a video of ``num_frames`` frames (see :func:`frame_indices`)."""
        return frame_indices(self.cfg, self.split, num_frames, num_clips=self.clips, rng=rng, path=path)

    # -- bad samples -----------------------------------------------------------------------------
    def _reason(self, candidate: int, exc: DecodeError) -> str:
        reason = exc.reason if exc.path == self.records[candidate].path else str(exc)
        self.known_bad[candidate] = reason
        return reason

    def plan(self, index: int, epoch: int, load: Loader) -> ItemPlan:
        """Read item ``index`` of ``epoch`` with ``load`` (see :data:`Loader`).

        Train: a record ``load`` fails on (:class:`DecodeError`) is replaced, up to
        :data:`MAX_REPLACEMENTS` times, then ``RuntimeError`` (each candidate is read, known
        bad or not). Val/test: never replaced, a :attr:`ItemPlan.skipped` plan comes back
        (a known-bad file without reading it again).
        """
        bad: Bad = []
        candidate = index
        draw = self.replacement_draw(index, epoch) if self.split == "train" else None
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = self.records[candidate]
            if draw is None and candidate in self.known_bad:  # val/test: the same indices, the same failure
                bad.append((record.path, self.known_bad[candidate]))
            else:
                py_rng, np_rng = self.generators(candidate, epoch, attempt)
                picked: List[np.ndarray] = []

                def pick(num_frames: int, _path=record.path, _rng=np_rng) -> np.ndarray:
                    picked.append(self.indices(num_frames, _rng, _path))
                    return picked[-1]

                try:
                    payload = load(record, pick)
                    return ItemPlan(index, candidate, epoch, record, attempt, picked[-1] if picked else None,
                                    payload, py_rng, bad)
                except DecodeError as exc:
                    bad.append((record.path, self._reason(candidate, exc)))
            if draw is None:  # evaluation: never replaced
                return ItemPlan(index, candidate, epoch, record, attempt, bad=bad, skipped=True)
            candidate = self.replacement(draw)
        listed = "\n  ".join(f"{p}: {r}" for p, r in bad[:10])
        raise RuntimeError(f"{len(bad)} consecutive bad samples while loading item {index} of the "
                           f"{self.split} list; first offenders:\n  {listed}")

    # -- augmentation ----------------------------------------------------------------------------
    def augment(self, frames, label: int, py_rng: Optional[random.Random]):
        """Decoded frames (numpy ``uint8[F, H, W, 3]`` or a tensor ``uint8[F, 3, H, W]`` on any
        device; F = K*T*M in (clip, segment, local) order) -> ``(video, label)`` of this split."""
        cfg = self.cfg
        t, m = cfg.num_segments, cfg.num_local
        if self.split == "train":
            return augment_copies(frames, label, py_rng, self.transform, cfg.num_sample, self.swap, (t, m))
        if self.split == "val":
            clip = self.transform(frames)[0]
            return clip.view(t, m, *clip.shape[1:]), torch.tensor(label, dtype=torch.int64)
        k = self.clips
        views = []
        for clip in frames.reshape(k, t * m, *frames.shape[1:]):  # numpy [H,W,3] or tensor [3,H,W] frames
            views.append(self.transform(clip))  # [crops, T*M, 3, S, S]
        video = torch.stack(views, dim=1)  # [crops, clips, T*M, 3, S, S]: crop-major, then clip
        video = video.reshape(self.crops * k, t, m, *video.shape[-3:])
        return video, torch.tensor(label, dtype=torch.int64)
