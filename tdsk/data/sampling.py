"""Official TDS-CLIP frame-index sampling (docs/sampling.md §1-2).

:func:`sample_indices` is pure: it depends only on its arguments (and on ``rng``
for the random training draws) and returns 0-based frame indices. Frame files on
disk are numbered from 1; adding that bias is the decoder's business, not this
module's.
"""
from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["sample_indices", "segment_offsets", "local_indices", "DATASETS", "MODES"]

DATASETS = ("sth", "kinetics")
MODES = ("train", "val", "test")

RandomLike = Union[None, int, np.random.Generator, np.random.RandomState]


def _as_rng(rng: RandomLike):
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    raise TypeError(f"rng must be None, an int seed, a numpy Generator or RandomState, got {type(rng)!r}")


def _randint(rng, low: int, high_exclusive: int, size=None):
    """Uniform integers in [low, high_exclusive) for both numpy RNG flavours."""
    if isinstance(rng, np.random.RandomState):
        return rng.randint(low, high_exclusive, size=size)
    return rng.integers(low, high_exclusive, size=size)


def segment_offsets(num_frames: int, num_segments: int, mode: str, clip_index: int = 0,
                    num_clips: int = 1, dataset: str = "sth", rng: RandomLike = None) -> np.ndarray:
    """0-based centre offsets ``int64[num_segments]`` of one clip (docs/sampling.md §1).

    * ``sth`` train: TSN random shift, ``tick_i = floor(i*n/T)``, offset drawn uniformly in
      ``[tick_i, tick_{i+1})``; if ``n <= T`` all frames plus ``T-n`` uniform draws, sorted.
    * ``sth`` val: ``round(s*i) + int(s/2)`` with ``s = (n-1)/T`` (round half to even).
    * ``sth`` test clip k of K: ``round(s*i) + int(d*(k+1))`` with ``d = s/(K+1)``.
    * ``kinetics`` train: uniform in ``[round(s*i), round(s*(i+1))]`` inclusive, ``s = (n-1)/T``.
    * ``kinetics`` val: ``int(i*n/T) mod n`` (segment start).
    * ``kinetics`` test: ``int(start_k + tau*i) mod n``, ``tau = n/T``,
      ``start_k = int(linspace(0, tau-1, K)[k])``.
    """
    n, t = int(num_frames), int(num_segments)
    if n < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if t < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "test" and not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index {clip_index} out of range for num_clips={num_clips}")
    i = np.arange(t)

    if dataset == "sth":
        if mode == "train":
            rng = _as_rng(rng)
            if n <= t:
                extra = _randint(rng, 0, n, size=t - n)
                return np.sort(np.concatenate([np.arange(n), extra])).astype(np.int64)
            ticks = [k * n // t for k in range(t + 1)]
            return np.array([ticks[k] + int(_randint(rng, 0, ticks[k + 1] - ticks[k]))
                             for k in range(t)], dtype=np.int64)
        s = (n - 1) / t
        if mode == "val":
            return (np.round(s * i) + int(s / 2)).astype(np.int64)
        d = s / (num_clips + 1)
        return (np.round(s * i) + int(d * (clip_index + 1))).astype(np.int64)

    # kinetics
    if mode == "train":
        rng = _as_rng(rng)
        s = (n - 1) / t
        # Python's round() is round-half-to-even like np.round; bounds are inclusive.
        return np.array([int(_randint(rng, round(s * k), round(s * (k + 1)) + 1)) for k in range(t)],
                        dtype=np.int64)
    if mode == "val":
        return np.array([int(k * n / t) % n for k in range(t)], dtype=np.int64)
    tau = n / t
    start = int(np.linspace(0, tau - 1, num_clips)[clip_index])
    return np.array([int(start + tau * k) % n for k in range(t)], dtype=np.int64)


def local_indices(offsets: np.ndarray, num_frames: int, num_local: int,
                  wrap_negative: bool = False) -> np.ndarray:
    """Expand centre offsets to ``int64[len(offsets), num_local]`` local frame indices.

    Local frame m of centre o is ``o - num_local//2 + m``. Indices past the end are
    clamped to ``num_frames - 1``. Negative indices are clamped to 0, or, with
    ``wrap_negative=True``, wrap to the end of the video the way decord's Python-style
    indexing does in the official Kinetics loader (docs/sampling.md §2, off by default).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    idx = offsets[:, None] - num_local // 2 + np.arange(num_local)[None, :]
    idx = np.minimum(idx, num_frames - 1)
    if wrap_negative:
        idx = np.where(idx < 0, np.mod(idx, num_frames), idx)
    else:
        idx = np.maximum(idx, 0)
    return idx.astype(np.int64)


def sample_indices(num_frames: int, num_segments: int, num_local: int, mode: str,
                   clip_index: int = 0, num_clips: int = 1, dataset: str = "sth",
                   rng: RandomLike = None, *, wrap_negative: bool = False) -> np.ndarray:
    """0-based frame indices ``int64[num_segments, num_local]`` of one clip, as the official code.

    Args:
        num_frames: frames in the video (files in the frame folder, or decoded length).
        num_segments: T, segments per clip.
        num_local: M, consecutive local frames around each segment centre (5 in TDS-CLIP).
        mode: ``"train"`` (random), ``"val"`` (single centred clip, in-training
            validation) or ``"test"`` (clip ``clip_index`` of ``num_clips``).
        clip_index, num_clips: the temporal clip, test mode only.
        dataset: ``"sth"`` (Something-Something rules) or ``"kinetics"``.
        rng: ``None`` (fresh entropy), an int seed, or a numpy ``Generator``/``RandomState``;
            only train mode draws from it.
        wrap_negative: reproduce the official Kinetics wrap of negative local indices to
            the end of the video (bit-level parity); default clamps them to 0.

    Row ``t`` holds the local frames of segment ``t`` in order ``o-M//2 .. o+M//2``; the
    centre frame is column ``M//2``.
    """
    if num_local < 1:
        raise ValueError(f"num_local must be >= 1, got {num_local}")
    offsets = segment_offsets(num_frames, num_segments, mode, clip_index, num_clips, dataset, rng)
    return local_indices(offsets, int(num_frames), int(num_local), wrap_negative)
