"""Timeline inference over a whole video, and over a live stream (docs/timeline.md).

::

    from tdsk.timeline import timeline, stream

    res = timeline(rec, "long.mp4", out_dir="out/")   # rec: tdsk.Recognizer or a TDS-CLIP model
    res.rows        # one dict per window: start/end (s), top-k labels and probabilities
    res.segments    # consecutive windows with the same top-1 merged: "label from t0 to t1"
    res.paths       # {'json', 'csv', 'png'} written under out_dir

    for row in stream(rec, frames, fps=30):           # any iterator of uint8 [H, W, 3] RGB frames
        print(row["start"], row["top"][0]["label"])

Sampling (docs/timeline.md §1). The model's window is ``T`` segments of ``M`` local frames
around a centre. Centres sit on a fixed grid: segment ``j`` spans frames
``[j*s, (j+1)*s)`` and its centre is ``c_j = j*s + s//2``; its local frames are
``c_j - M//2 .. c_j + M//2``, clamped to the video (docs/sampling.md §2). The spacing
``s = max(1, round(clip_seconds * fps / T))`` (``clip_seconds = 4``) is the recipe's
average training segment length (TSN: ``n / T``) for a clip of ``clip_seconds`` at the
video's frame rate, so one window covers what a training clip covers. Window ``w`` is
segments ``w*stride .. w*stride + T - 1`` (``stride`` in segments, default 1). When the
windows of the grid do not reach the end of the video, one last window ends at the last
segment (a video shorter than a window gives one window whose missing segments repeat
the last frame).

Reuse (docs/timeline.md §2). The frozen CLIP sees each centre frame on its own, so each
segment's taps (:meth:`tdsk.models.tds_clip.TDSCLIP.frame_taps`) are computed once and kept
in a ring buffer of the last ``T`` segments; per window only the side network runs
(:meth:`~tdsk.models.tds_clip.TDSCLIP.forward_from_taps`). The logits equal independent
per-window inference (``reuse=False``) up to float rounding (<= 1e-5 in fp32, tested).

Memory: frames are decoded as a stream (PyAV, sequential); the engine holds the last
``M`` preprocessed frames, the last ``T`` segments (local frames + taps) and a few
thumbnails, whatever the video's length.
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

# the frame source (files and live input) lives in the data package, the writers in tdsk.report;
# both are re-exported here, where they were first documented
from tdsk.data.stream import MAX_GUESSED_FPS, VideoFrames, live_source  # noqa: F401
from tdsk.report import plot_timeline, smooth_segments, write_rows_csv  # noqa: F401
from tdsk.models.registry import logits_of

__all__ = ["timeline", "stream", "TimelineEngine", "NonFiniteWindowError", "TimelineResult", "VideoFrames", "segment_spacing",
           "stride_segments", "live_source",
           "segment_frame_indices", "window_frame_indices", "smooth_segments", "write_rows_csv",
           "plot_timeline", "DEFAULT_CLIP_SECONDS", "resolve_source", "eval_mode"]

class NonFiniteWindowError(RuntimeError):
    """The model produced NaN/inf for a window: there is no prediction for it. (Not
    :class:`tdsk.inference.NonFiniteOutputError`, so that tdsk.inference can import this module
    without an import cycle.)"""


#: the length of a "typical training clip" one window should cover (docs/timeline.md §1)
DEFAULT_CLIP_SECONDS = 4.0


# ----------------------------------------------------------------------------- sampling

MAX_SECONDS = 1e6  # bounds of a time argument (11 days): larger values overflow frame counts
MAX_FPS = 1000.0


def segment_spacing(fps: float, num_segments: int = 8, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> int:
    """Frames between consecutive segment centres: ``max(1, round(clip_seconds * fps / T))``.

    The recipe's average training segment length for a ``clip_seconds`` clip (TSN segments of
    ``n / T`` frames, ``n = clip_seconds * fps``), e.g. 6 frames (0.5 s) at 12 fps, 15 at 30 fps.
    """
    if not fps or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return max(1, int(round(float(clip_seconds) * float(fps) / int(num_segments))))


def segment_frame_indices(j: int, spacing: int, num_local: int, num_frames: Optional[int] = None) -> np.ndarray:
    """Local frame indices ``int64[M]`` of segment ``j`` (centre ``j*s + s//2``), clamped to
    ``[0, num_frames - 1]`` (docs/sampling.md §2; no upper clamp when ``num_frames`` is None)."""
    c = int(j) * int(spacing) + int(spacing) // 2
    idx = c - num_local // 2 + np.arange(num_local, dtype=np.int64)
    if num_frames is not None:
        idx = np.minimum(idx, int(num_frames) - 1)
    return np.maximum(idx, 0)


def window_frame_indices(first_segment: int, num_segments: int, spacing: int, num_local: int,
                         num_frames: Optional[int] = None) -> np.ndarray:
    """``int64[T, M]`` frame indices of the window starting at ``first_segment`` (what
    independent inference of that window samples)."""
    return np.stack([segment_frame_indices(first_segment + t, spacing, num_local, num_frames)
                     for t in range(num_segments)])


def stride_segments(stride: Optional[int], stride_seconds: Optional[float], segment_seconds: float) -> int:
    """Windows advance by whole segments (so that the frozen taps can be shared): ``stride``
    segments, or ``stride_seconds`` rounded to the nearest whole number of segments (at least
    one; the effective value is in the timeline's ``stride_seconds``). Default one segment."""
    if stride is not None and stride_seconds is not None:
        raise ValueError("give stride (segments) or stride_seconds, not both")
    if stride_seconds is not None:
        if not float(stride_seconds) > 0:
            raise ValueError(f"stride_seconds must be > 0, got {stride_seconds}")
        return max(1, int(math.floor(float(stride_seconds) / float(segment_seconds) + 0.5)))  # halves up
    if stride is None:
        return 1
    if int(stride) != stride or int(stride) < 1:
        raise ValueError(f"stride must be a whole number of segments >= 1, got {stride}")
    return int(stride)


# ----------------------------------------------------------------------------- the engine

@dataclass
class _Segment:
    index: int
    frames: torch.Tensor                         # [M, 3, S, S] normalised local frames
    taps: Optional[List[torch.Tensor]] = None    # L x [N+1, C], computed when a window needs them


def resolve_source(model_or_recognizer) -> Dict[str, Any]:
    """model, classes, transform sizes, normalisation, device and autocast of a Recognizer or model."""
    from tdsk.schema import CLIP_MEAN, CLIP_STD

    if hasattr(model_or_recognizer, "data_cfg") and hasattr(model_or_recognizer, "model"):
        rec = model_or_recognizer
        d = rec.data_cfg
        clip = (getattr(rec, "cfg", None) or {}).get("eval", {}) or {}
        return dict(model=getattr(rec, "runtime_model", rec.model), classes=rec.classes, size=int(d.input_size),
                    resize=d.resize_size, mean=list(d.mean), std=list(d.std), device=rec.device, autocast=rec.autocast,
                    clip_seconds=float(clip.get("clip_seconds") or DEFAULT_CLIP_SECONDS))
    model = model_or_recognizer
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a tdsk.Recognizer or a TDS-CLIP model, got {type(model).__name__}")
    cfg = getattr(model, "config", {}) or {}
    size = int(cfg.get("input_size", 224))
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return dict(model=model, classes=None, size=size, resize=size, mean=list(CLIP_MEAN), std=list(CLIP_STD),
                device=device, autocast=contextlib.nullcontext, clip_seconds=DEFAULT_CLIP_SECONDS)


class TimelineEngine:
    """Frames in (``push``), per-window predictions out, with frozen-tap reuse.

    ``push(frame)`` takes one ``uint8 [H, W, 3]`` RGB frame and returns the rows of the
    windows that frame completed (usually zero or one); ``finish()`` flushes the end of the
    video (segments whose local frames run past the end are clamped to the last frame, and
    a last window is added when the stride grid stops short of the end). A row is::

        {"window": w, "first_segment": j0, "start": s0, "end": s1, "time": centre,
         "top": [{"index", "label", "prob"}, ...]}   (+ "logits": Tensor[K] with keep_logits)

    ``reuse=False`` runs the full model on every window instead (the reference the reuse is
    tested against; also what the benchmark compares with).
    """

    def __init__(self, model_or_recognizer, fps: float, *, stride: Optional[int] = None,
                 spacing: Optional[int] = None, clip_seconds: Optional[float] = None, top_k: int = 5,
                 classes: Optional[Sequence[str]] = None, reuse: bool = True, keep_logits: bool = False,
                 max_thumbs: int = 0, thumb_height: int = 48, thumb_every: int = 1,
                 stride_seconds: Optional[float] = None):
        r = resolve_source(model_or_recognizer)
        self.model: nn.Module = r["model"]
        self.classes = list(classes) if classes is not None else (list(r["classes"]) if r["classes"] else None)
        self.device = torch.device(r["device"])
        self._autocast = r["autocast"]
        self.T = int(getattr(self.model, "num_segments", 8))
        self.M = int(getattr(self.model, "num_local", 5))
        self.fps = float(fps)
        if not (math.isfinite(self.fps) and 0 < self.fps <= MAX_FPS):
            raise ValueError(f"fps must be in (0, {MAX_FPS:g}], got {fps}")
        if spacing is not None and (isinstance(spacing, bool) or int(spacing) != spacing or int(spacing) < 1):
            raise ValueError(f"spacing must be a whole number of frames >= 1, got {spacing!r}")  # 0 fell back before
        if clip_seconds is None:  # the recipe's eval.clip_seconds (a Recognizer), else 4 s
            clip_seconds = r["clip_seconds"]
        self.clip_seconds = float(clip_seconds)
        if not (math.isfinite(float(clip_seconds)) and 0 < float(clip_seconds) <= MAX_SECONDS):
            raise ValueError(f"clip_seconds must be in (0, {MAX_SECONDS:g}], got {clip_seconds}")
        if stride_seconds is not None and not (math.isfinite(float(stride_seconds))
                                               and 0 < float(stride_seconds) <= MAX_SECONDS):
            raise ValueError(f"stride_seconds must be in (0, {MAX_SECONDS:g}], got {stride_seconds}")
        if stride is not None and (isinstance(stride, bool) or int(stride) != stride or int(stride) < 1):
            raise ValueError(f"stride must be a whole number of segments >= 1, got {stride!r}")
        if isinstance(top_k, bool) or int(top_k) != top_k or int(top_k) < 1:
            raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
        self.spacing = int(spacing) if spacing is not None else segment_spacing(self.fps, self.T, clip_seconds)
        self.stride = stride_segments(stride, stride_seconds, self.spacing / self.fps)
        self.top_k = int(top_k)
        self.keep_logits = bool(keep_logits)
        self.reuse = bool(reuse) and hasattr(self.model, "frame_taps") and hasattr(self.model, "forward_from_taps")
        # cache the side network's per-frame tap projections (D wide) rather than the raw taps (C wide)
        self._project = self.reuse and hasattr(self.model, "project_taps")
        from tdsk.data.transforms import EvalTransform

        self._transform = EvalTransform(r["size"], r["resize"], crops=1)
        self._mean = torch.tensor(r["mean"], dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(r["std"], dtype=torch.float32).view(3, 1, 1)
        self._recent: "collections.deque[Tuple[int, torch.Tensor]]" = collections.deque(maxlen=self.M)
        self._segments: "collections.deque[_Segment]" = collections.deque(maxlen=self.T)
        self.frames_seen = 0
        self._next_segment = 0      # the next segment to assemble
        self._next_window = 0       # the next window of the stride grid
        self._last_end = 0          # first segment after the last emitted window
        self._windows = 0
        self.finished = False
        self.taps_computed = 0      # frozen-CLIP frames run (the reuse: one per segment used)
        self.max_buffered_frames = 0
        # thumbnails: one every `thumb_every` frames, decimated to stay under 2 * max_thumbs
        self.max_thumbs, self.thumb_height, self._thumb_every = int(max_thumbs), int(thumb_height), max(1, thumb_every)
        self.thumbs: List[Tuple[float, np.ndarray]] = []

    # -- geometry ------------------------------------------------------------------------------
    @property
    def segment_seconds(self) -> float:
        return self.spacing / self.fps

    @property
    def window_seconds(self) -> float:
        return self.T * self.spacing / self.fps

    def meta(self) -> Dict[str, Any]:
        return {"fps": self.fps, "frames": self.frames_seen, "duration": self.frames_seen / self.fps,
                "num_segments": self.T, "num_local": self.M, "spacing_frames": self.spacing,
                "segment_seconds": self.segment_seconds, "window_seconds": self.window_seconds,
                "stride_segments": self.stride, "stride_seconds": self.stride * self.segment_seconds,
                "reuse": self.reuse, "windows": self._windows, "clip_frames_run": self.taps_computed}

    # -- input ---------------------------------------------------------------------------------
    def _prepare(self, frame) -> torch.Tensor:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 RGB [H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
        clip = self._transform(arr[None])[0, 0]            # uint8 [3, S, S], the test transform of one frame
        x = clip.to(torch.float32).mul_(1.0 / 255.0).sub_(self._mean).div_(self._std)
        return x.to(self.device)

    def _keep_thumb(self, i: int, frame) -> None:
        if not self.max_thumbs or i % self._thumb_every:
            return
        from PIL import Image

        img = Image.fromarray(np.asarray(frame))
        w = max(1, int(round(img.width * self.thumb_height / max(1, img.height))))
        self.thumbs.append((i / self.fps, np.asarray(img.resize((w, self.thumb_height), Image.BILINEAR))))
        if len(self.thumbs) > 2 * self.max_thumbs:
            self.thumbs = self.thumbs[::2]
            self._thumb_every *= 2

    def push(self, frame) -> List[dict]:
        """Add the next frame; returns the rows of the windows it completed."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        i = self.frames_seen
        self._keep_thumb(i, frame)
        self._recent.append((i, self._prepare(frame)))
        self.frames_seen += 1
        rows = []
        # segment j is complete once its last local frame c_j + M//2 has arrived
        while self._segment_last_frame(self._next_segment) <= i:
            rows.extend(self._add_segment(self._next_segment, num_frames=None))
        return rows

    def _segment_last_frame(self, j: int) -> int:
        return j * self.spacing + self.spacing // 2 + self.M // 2

    def _add_segment(self, j: int, num_frames: Optional[int]) -> List[dict]:
        idx = segment_frame_indices(j, self.spacing, self.M, num_frames)
        have = dict(self._recent)
        frames = torch.stack([have[int(k)] for k in idx])
        self._segments.append(_Segment(j, frames))
        self._next_segment = j + 1
        self.max_buffered_frames = max(self.max_buffered_frames, len(self._recent) + self.M * len(self._segments))
        rows = []
        start = self._next_window * self.stride
        if j == start + self.T - 1:
            rows.append(self._run_window(start))
            self._next_window += 1
        return rows

    def finish(self) -> List[dict]:
        """End of the video: clamp the pending segments, add the last window if needed."""
        if self.finished:
            return []
        self.finished = True
        n = self.frames_seen
        rows: List[dict] = []
        if n == 0:
            return rows
        num_segments = -(-n // self.spacing)          # segments that start inside the video
        while self._next_segment < num_segments:
            rows.extend(self._add_segment(self._next_segment, num_frames=n))
        if self._last_end < num_segments or self._windows == 0:
            while self._next_segment < self.T:         # a video shorter than one window
                self._add_segment_clamped(self._next_segment, n)
            rows.append(self._run_window(max(0, num_segments - self.T) if num_segments >= self.T else 0,
                                         last=True))
        if rows:
            rows[-1]["end"] = min(rows[-1]["end"], n / self.fps)
        return rows

    def _add_segment_clamped(self, j: int, n: int) -> None:
        idx = segment_frame_indices(j, self.spacing, self.M, n)
        have = dict(self._recent)
        self._segments.append(_Segment(j, torch.stack([have[int(k)] for k in idx])))
        self._next_segment = j + 1

    # -- the model -----------------------------------------------------------------------------
    def _window_segments(self, first: int) -> List[_Segment]:
        segs = [s for s in self._segments if first <= s.index < first + self.T]
        if len(segs) != self.T:  # never: the ring buffer holds the last T segments
            raise RuntimeError(f"window at segment {first}: {len(segs)} of {self.T} segments buffered")
        return segs

    def _run_window(self, first: int, last: bool = False) -> dict:
        segs = self._window_segments(first)
        video = torch.stack([s.frames for s in segs]).unsqueeze(0)    # [1, T, M, 3, S, S]
        with torch.no_grad(), self._autocast():
            if self.reuse:
                todo = [s for s in segs if s.taps is None]
                if todo:
                    centres = torch.stack([s.frames[self.M // 2] for s in todo])
                    taps = self.model.frame_taps(centres)              # L x [len(todo), N+1, C]
                    if self._project:
                        taps = self.model.project_taps(taps)           # L x [len(todo), N+1, D]
                    for k, s in enumerate(todo):
                        s.taps = [z[k] for z in taps]
                    self.taps_computed += len(todo)
                layers = len(segs[0].taps)
                taps = [torch.stack([s.taps[l] for s in segs]) for l in range(layers)]
                logits = (self.model.forward_from_taps(video, taps, projected=True) if self._project
                          else self.model.forward_from_taps(video, taps))
            else:
                logits = logits_of(self.model, self.model(video))
                self.taps_computed += self.T
        logits = logits.float()[0].cpu()
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteWindowError(f"non-finite logits in the window at segment {first} "
                                       f"({first * self.spacing / self.fps:.2f} s)")
        probs = logits.softmax(-1)
        values, indices = probs.topk(min(self.top_k, probs.shape[-1]))
        start = first * self.spacing / self.fps
        end = (first + self.T) * self.spacing / self.fps
        row = {"window": self._windows, "first_segment": first, "start": start, "end": end,
               "time": 0.5 * (start + end),
               "top": [{"index": int(i), "label": self._label(int(i)), "prob": float(p)}
                       for p, i in zip(values, indices)]}
        if self.keep_logits:
            row["logits"] = logits
        self._windows += 1
        self._last_end = first + self.T
        return row

    def _label(self, i: int) -> str:
        return self.classes[i] if self.classes and 0 <= i < len(self.classes) else str(i)


# ----------------------------------------------------------------------------- public API

def stream(model_or_recognizer, frames: Iterable, fps: float, stride: Optional[int] = None, *,
           spacing: Optional[int] = None, clip_seconds: Optional[float] = None, top_k: int = 5,
           classes: Optional[Sequence[str]] = None, reuse: bool = True, keep_logits: bool = False,
           engine: Optional[TimelineEngine] = None, stride_seconds: Optional[float] = None) -> Iterator[dict]:
    """Predictions over a live stream: consume ``frames`` (any iterator of ``uint8 [H, W, 3]``
    RGB arrays, e.g. a webcam or RTSP source opened with PyAV) one at a time, and yield a row
    (see :class:`TimelineEngine`) every ``stride`` segments as soon as its window is complete,
    with the same frozen-tap reuse as :func:`timeline`. When the iterator ends, the tail is
    flushed as :func:`timeline` does for a file (same rows for the same frames).

    ``fps``: the source's frame rate (it sets the segment spacing and the times). ``stride``
    (segments) or ``stride_seconds`` (rounded to whole segments, :func:`stride_segments`).
    """
    eng = engine or TimelineEngine(model_or_recognizer, fps, stride=stride, spacing=spacing,
                                   clip_seconds=clip_seconds, top_k=top_k, classes=classes, reuse=reuse,
                                   keep_logits=keep_logits, stride_seconds=stride_seconds)
    with eval_mode(eng.model):
        for frame in frames:
            yield from eng.push(frame)
        yield from eng.finish()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@dataclass
class TimelineResult:
    """What :func:`timeline` returns: ``rows`` (per window), ``segments`` (smoothed),
    ``meta`` (fps, duration, spacing, ...), ``paths`` (files written; empty without ``out_dir``),
    ``thumbs`` (``(time, uint8 [h, w, 3])`` frames for the plot)."""

    rows: List[dict]
    segments: List[dict]
    meta: Dict[str, Any]
    paths: Dict[str, str] = field(default_factory=dict)
    thumbs: List[Tuple[float, np.ndarray]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        rows = [{k: v for k, v in r.items() if k != "logits"} for r in self.rows]
        return {**self.meta, "windows": rows, "segments": self.segments}

    def save(self, out_dir: str, stem: str = "timeline", plot: bool = True, classes_in_plot: int = 5,
             truth: Optional[Sequence[dict]] = None) -> Dict[str, str]:
        """Write ``<stem>.json``, ``<stem>.csv`` and (``plot``) ``<stem>.png`` under ``out_dir``;
        ``truth`` (``[{"start", "end", "label"}]``, seconds) adds a ground-truth row to the plot."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {"json": os.path.join(out_dir, f"{stem}.json"), "csv": os.path.join(out_dir, f"{stem}.csv")}
        from tdsk import _io

        _io.write_json(paths["json"], self.to_dict(), indent=1)  # atomic: a killed run leaves no half file
        write_rows_csv(self.rows, paths["csv"])
        if plot:
            paths["png"] = os.path.join(out_dir, f"{stem}.png")
            plot_timeline(self, paths["png"], classes_in_plot, truth=truth)
        self.paths.update(paths)
        return paths


def timeline(recognizer_or_model, video_path: str, stride: Optional[int] = None, *,
             out_dir: Optional[str] = None, top_k: int = 5, spacing: Optional[int] = None,
             clip_seconds: Optional[float] = None, classes: Optional[Sequence[str]] = None,
             reuse: bool = True, keep_logits: bool = False, plot: bool = True, max_thumbs: int = 12,
             threads: int = 0, stem: Optional[str] = None, stride_seconds: Optional[float] = None) -> TimelineResult:
    """Slide the model's window over the whole of ``video_path`` (decoded as a stream).

    ``stride``: windows advance by this many segments (default 1: consecutive windows share
    ``T - 1`` centre frames, whose frozen taps are reused); or ``stride_seconds``, rounded to
    whole segments (:func:`stride_segments`). ``spacing``: frames between segment
    centres (default :func:`segment_spacing` of the video's fps and ``clip_seconds``).
    With ``out_dir``, writes ``<stem>.json`` (meta + windows + segments), ``<stem>.csv`` (one
    line per window) and ``<stem>.png`` (``plot``: class-probability ribbons under a strip of
    thumbnails); ``stem`` defaults to the video's file name without extension.
    """
    frames = VideoFrames(video_path, threads=threads)
    eng = TimelineEngine(recognizer_or_model, frames.fps, stride=stride, stride_seconds=stride_seconds,
                         spacing=spacing, clip_seconds=clip_seconds, top_k=top_k, classes=classes, reuse=reuse,
                         keep_logits=keep_logits, max_thumbs=max_thumbs if plot else 0,
                         thumb_every=max(1, frames.num_frames_hint // max(1, 2 * max_thumbs)))
    rows = list(stream(None, frames, frames.fps, engine=eng))
    if eng.frames_seen == 0:  # as for plain predict: never an empty timeline with exit 0
        from tdsk.data.decoders import DecodeError

        raise DecodeError(os.fspath(video_path), "zero frames")
    meta = {"source": os.fspath(video_path), **eng.meta()}
    res = TimelineResult(rows, smooth_segments(rows, meta["duration"]), meta, thumbs=_pick_thumbs(eng.thumbs, max_thumbs))
    if out_dir is not None:
        res.save(out_dir, stem or os.path.splitext(os.path.basename(os.fspath(video_path)))[0] or "timeline", plot)
    return res


def _pick_thumbs(thumbs, k: int):
    if len(thumbs) <= k or k <= 0:
        return list(thumbs)
    pick = np.linspace(0, len(thumbs) - 1, k).round().astype(int)
    return [thumbs[i] for i in pick]


# the names explain and the demo imported before they were public
_resolve = resolve_source
_eval_mode = eval_mode
