"""CPU decoders: PyAV for video files, Pillow for JPEG frame folders.

Both return exactly the requested 0-based frame indices as ``uint8[N, H, W, 3]`` RGB,
in the order asked (repeats allowed), and raise :class:`DecodeError` for anything that
makes a sample unusable (missing file, not a video, truncated or corrupt stream, zero
frames, a requested frame the stream does not deliver, an unreadable JPEG, a frame
folder with a missing frame file).

Frame ``i`` of a video is the ``i``-th frame in presentation order. :class:`PyAVVideo`
builds that index from the demuxed packets (no decoding, like decord's index), so the
frame count is exact and every frame can be reached by a seek to the keyframe before it.
It decodes sequentially while the next wanted frame is near, and seeks when seeking
skips at least ``min_seek_gap`` frames: short clips are one sequential pass, long
videos one short burst per sampled segment.

Truncation: a container that declares a frame count (mp4, avi) must hold that many
frames. One that declares only a duration (webm/mkv: the Segment duration) must hold
packets up to it: when the packets of all its streams end more than
``max(3 frames, 5% of the duration)`` before the declared duration, the file is
truncated (a cut download or copy) and raises :class:`DecodeError`.

Display rotation (phone videos): frames are returned as players and the ``ffmpeg`` tool
show them. The display matrix the demuxer attaches to decoded frames (mp4/mov ``tkhd``
matrix, what ``ffmpeg -metadata:s:v rotate=90`` or ``-display_rotation`` writes; PyAV's
``VideoFrame.rotation``) is applied like ffmpeg's autorotate: a rotation by a multiple
of 90 degrees and any mirroring, so a 1080x1920 portrait clip stored as 1920x1080 comes
out ``[N, 1920, 1080, 3]``. Other angles are rare and left unrotated (with a warning).
``autorotate=False`` returns the stored frames (``ffmpeg -noautorotate``).
"""
from __future__ import annotations

import bisect
import logging
import os
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DecodeError", "PyAVVideo", "read_video_frames", "read_jpeg_frames", "count_jpeg_frames",
           "check_jpeg_frames"]


class DecodeError(RuntimeError):
    """A sample that cannot be decoded. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_LOCAL = threading.local()


def _to_rgb(frame) -> np.ndarray:
    """``uint8[H, W, 3]``; same pixels as ``frame.to_ndarray(format="rgb24")``.

    One reformatter per thread (and process) keeps its swscale context between frames
    (a fresh one per frame costs ~20x more on small frames). Per *thread*: a swscale
    context is not thread-safe, and two threads converting frames of different sizes
    through one context crash the process (a user decoding in a thread pool, or
    ``tdsk.extract``). swscale runs single-threaded: its default thread pool, once
    started in a parent process, makes swscale hang in forked loader workers (seen with
    PyAV 18 / FFmpeg 8.1). The reformatter is re-created after a fork all the same.
    """
    fmt = getattr(_LOCAL, "reformatter", None)
    if fmt is None or getattr(_LOCAL, "pid", None) != os.getpid():
        from av.video.reformatter import VideoReformatter

        fmt = _LOCAL.reformatter = VideoReformatter()
        _LOCAL.pid = os.getpid()
    return fmt.reformat(frame, format="rgb24", threads=1).to_ndarray()


to_rgb = _to_rgb  # public name, for tools that decode frames themselves (tdsk.data.prepare)


# (transpose, flip_horizontal, flip_vertical) applied in that order; None = leave as stored.
Orientation = Optional[Tuple[bool, bool, bool]]


def display_orientation(matrix, path: str = "") -> Orientation:
    """How to show frames stored under a display ``matrix`` (9 int32, libavutil layout).

    The matrix maps a stored pixel ``(x, y)`` (y down) to the display position
    ``x' = m[0] x + m[3] y``, ``y' = m[1] x + m[4] y``. Axis-aligned matrices (rotations
    by multiples of 90 degrees, mirrors) give ``(transpose, hflip, vflip)``, the same
    result as ffmpeg's autorotate (transpose/hflip/vflip filters); identity gives None.
    """
    if matrix is None:
        return None
    m = np.asarray(matrix, dtype=np.float64).reshape(-1)
    if m.size < 9:
        return None
    a, b, c, d = m[0], m[1], m[3], m[4]
    scale = max(abs(a), abs(b), abs(c), abs(d))
    if scale == 0:
        return None
    a, b, c, d = (0.0 if abs(v) < 1e-3 * scale else v for v in (a, b, c, d))
    if b == 0 and c == 0 and a != 0 and d != 0:
        orientation = (False, bool(a < 0), bool(d < 0))
    elif a == 0 and d == 0 and b != 0 and c != 0:
        orientation = (True, bool(c < 0), bool(b < 0))
    else:
        from tdsk._logging import log_once

        angle = float(np.degrees(np.arctan2(-b, a)))
        log_once(f"rotation-{angle:.0f}", f"{path}: display rotation of {angle:.1f} degrees is not a multiple "
                                          "of 90; frames are returned as stored (unrotated)", logging.WARNING)
        return None
    return None if orientation == (False, False, False) else orientation


def _frame_orientation(frame, path: str) -> Orientation:
    try:
        side = frame.side_data.get("DISPLAYMATRIX")
    except (AttributeError, KeyError, ValueError):  # a PyAV without frame side data
        return None
    if side is None:
        return None
    return display_orientation(np.frombuffer(bytes(side), dtype="<i4"), path)


def _orient(rgb: np.ndarray, orientation: Orientation) -> np.ndarray:
    """Apply :func:`display_orientation`'s result to ``uint8[H, W, 3]`` (a view)."""
    if orientation is None:
        return rgb
    transpose, hflip, vflip = orientation
    if transpose:
        rgb = rgb.transpose(1, 0, 2)
    if hflip:
        rgb = rgb[:, ::-1]
    if vflip:
        rgb = rgb[::-1]
    return rgb


# Public names of the two steps, for tools that decode frames themselves (tdsk.data.prepare).
frame_orientation = _frame_orientation
apply_orientation = _orient


class PyAVVideo:
    """A video opened with PyAV, indexed by presentation order.

    ``threads``: FFmpeg decoder threads (0 = FFmpeg's choice; 1 suits loader workers,
    which already run in parallel). ``autorotate``: apply the display rotation (see the
    module docstring); False returns frames as stored.
    """

    #: truncation check of duration-only containers: packets may end this many frame
    #: intervals, or this fraction of the declared duration, before it (whichever is more)
    TRUNCATION_FRAMES = 3
    TRUNCATION_FRACTION = 0.05

    def __init__(self, path: str, threads: int = 1, min_seek_gap: int = 16, autorotate: bool = True):
        import av  # lazy: the package must import without PyAV

        self.path = path
        self.min_seek_gap = int(min_seek_gap)
        self.autorotate = bool(autorotate)
        self._orientation: Orientation = None
        self._orientation_known = not self.autorotate
        if not os.path.exists(path):
            raise DecodeError(path, "file not found")
        if os.path.isdir(path):
            raise DecodeError(path, "is a directory, not a video file")
        if os.path.getsize(path) == 0:
            raise DecodeError(path, "zero-length file")
        try:
            self.container = av.open(path)
        except Exception as exc:  # av.error.* and OSError: not a video we can read
            raise DecodeError(path, f"cannot open as a video ({type(exc).__name__}: {exc})") from None
        try:
            if not self.container.streams.video:
                raise DecodeError(path, "no video stream")
            self.stream = self.container.streams.video[0]
            if threads == 1:
                self.stream.thread_type = "SLICE"
                self.stream.codec_context.thread_count = 1
            else:
                self.stream.thread_type = "AUTO"
                self.stream.codec_context.thread_count = int(threads)
            self._build_index()
        except DecodeError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise DecodeError(path, f"cannot index video ({type(exc).__name__}: {exc})") from None

    def _build_index(self) -> None:
        pts: List[int] = []
        key_pts: List[int] = []
        discarded = 0
        declared_frames = int(self.stream.frames or 0)  # mp4/avi index; 0 (unknown) for webm/mkv
        # Without a frame count the declared duration is checked, against the packets of all
        # streams (an audio track may rightly outlast the video): demux them all then.
        check_duration = declared_frames == 0 and bool(self.container.duration)
        ends: Dict[int, int] = {}  # stream index -> latest packet end, in that stream's time base
        video_index = self.stream.index
        for packet in (self.container.demux() if check_duration else self.container.demux(self.stream)):
            if check_duration and packet.pts is not None:
                end = packet.pts + max(0, packet.duration or 0)
                if end > ends.get(packet.stream_index, end - 1):
                    ends[packet.stream_index] = end
            if packet.stream_index != video_index:
                continue
            if packet.is_discard:
                discarded += 1
            # Discard-flagged packets (before an mp4 edit list's start) are decoded but never
            # output: they are not frames of the video.
            if packet.pts is None or packet.size == 0 or packet.is_discard:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
        if not pts:
            raise DecodeError(self.path, "video stream has no frames")
        declared = declared_frames - discarded
        if declared > len(pts):
            raise DecodeError(self.path, f"truncated: the container declares {declared} frames, "
                                         f"only {len(pts)} are in the file")
        if check_duration and ends:
            streams = {s.index: s for s in self.container.streams}
            last_end = max((float(end * streams[i].time_base) for i, end in ends.items()
                            if streams[i].time_base is not None), default=None)
            if last_end is not None:
                self._check_duration(last_end, len(pts))
        pts.sort()
        self._pts = pts
        self._pts_to_index: Dict[int, int] = {p: i for i, p in enumerate(pts)}
        keys = sorted({self._pts_to_index[p] for p in key_pts})
        self._keyframes = keys if keys and keys[0] == 0 else [0] + keys

    def _check_duration(self, last_end: float, num_frames: int) -> None:
        """DecodeError when the packets end well before the container's declared duration."""
        declared = self.container.duration / 1e6  # AV_TIME_BASE
        start = (self.container.start_time or 0) / 1e6
        covered = last_end - start
        rate = self.stream.average_rate or self.stream.guessed_rate
        frame_s = 1.0 / float(rate) if rate else 0.04
        slack = max(self.TRUNCATION_FRAMES * frame_s, self.TRUNCATION_FRACTION * declared)
        if covered < declared - slack:
            raise DecodeError(self.path, f"truncated: the container declares {declared:.3f} s, its packets end "
                                         f"at {covered:.3f} s ({num_frames} video frames in the file)")

    @property
    def num_frames(self) -> int:
        return len(self._pts)

    def _keyframe_before(self, index: int) -> int:
        return self._keyframes[bisect.bisect_right(self._keyframes, index) - 1]

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """``uint8[len(indices), H, W, 3]`` RGB frames at 0-based presentation indices."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices requested")
        n = self.num_frames
        if idx.min() < 0 or idx.max() >= n:
            raise DecodeError(self.path, f"frame indices {idx.min()}..{idx.max()} outside the video's {n} frames")
        wanted = sorted(set(int(i) for i in idx))
        try:
            frames = self._decode(wanted)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(self.path, f"decoding failed ({type(exc).__name__}: {exc})") from None
        first = frames[wanted[0]]
        out = np.empty((idx.size,) + first.shape, dtype=np.uint8)
        for j, i in enumerate(idx):
            frame = frames[int(i)]
            if frame.shape != first.shape:
                raise DecodeError(self.path, f"frame size changes inside the video ({first.shape} -> {frame.shape})")
            out[j] = frame
        return out

    def _decode(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        wanted_set = set(wanted)
        frames: Dict[int, np.ndarray] = {}
        position = -1  # presentation index of the last frame the decoder gave
        decoding: Optional[Iterable] = None
        for target in wanted:
            if target in frames:
                continue
            keyframe = self._keyframe_before(target)
            if decoding is None or keyframe > position + self.min_seek_gap:
                self.container.seek(self._pts[keyframe], stream=self.stream, backward=True, any_frame=False)
                decoding = self.container.decode(self.stream)
                position = -1
            while target not in frames:
                try:
                    frame = next(decoding)
                except StopIteration:
                    raise DecodeError(self.path, f"stream ended before frame {target} "
                                                 f"(index has {self.num_frames} frames; truncated or corrupt)") from None
                index = self._pts_to_index.get(frame.pts) if frame.pts is not None else None
                if index is None:
                    index = position + 1  # frame without a known timestamp: assume the next one
                position = index
                if index in wanted_set and index not in frames:
                    if not self._orientation_known:  # one display matrix per stream
                        self._orientation = _frame_orientation(frame, self.path)
                        self._orientation_known = True
                    frames[index] = _orient(_to_rgb(frame), self._orientation)
                elif index > target:
                    raise DecodeError(self.path, f"frame {target} was not delivered by the decoder (corrupt stream)")
        return frames

    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            container.close()
            self.container = None

    def __enter__(self) -> "PyAVVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def read_video_frames(path: str, indices: Sequence[int], threads: int = 1, autorotate: bool = True) -> np.ndarray:
    """Open ``path``, return ``uint8[len(indices), H, W, 3]`` at the 0-based ``indices``
    (display rotation applied unless ``autorotate=False``)."""
    with PyAVVideo(path, threads=threads, autorotate=autorotate) as video:
        return video.get_frames(indices)


def count_jpeg_frames(folder: str, template: str) -> int:
    """Number of consecutive frame files ``template.format(1), template.format(2), ...``."""
    count = 0
    while os.path.exists(os.path.join(folder, template.format(count + 1))):
        count += 1
    return count


def template_matcher(template: str):
    """The one frame-template matcher: a function ``file name -> frame number`` (None when the
    name is not a frame file) for a template with one integer field such as ``img_{:05d}.jpg``.
    A template without exactly one number field, or with a folder part, is a ``ValueError``."""
    import re
    import string

    try:
        parts = list(string.Formatter().parse(template))
        template.format(1)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"bad frame template {template!r}: {exc}") from None
    fields = [i for i, p in enumerate(parts) if p[1] is not None]
    if len(fields) != 1 or os.sep in template or template.format(1) == template.format(2):
        raise ValueError(f"bad frame template {template!r}: it needs exactly one number field, "
                         "e.g. img_{:05d}.jpg, and no folder part")
    k = fields[0]
    head = "".join(p[0] for p in parts[:k + 1])
    tail = "".join(p[0] for p in parts[k + 1:])
    pattern = re.compile(re.escape(head) + r"([0-9]+)" + re.escape(tail) + r"\Z")

    def number(name: str) -> Optional[int]:
        match = pattern.match(name)
        if match is None:
            return None
        value = int(match.group(1))
        return value if template.format(value) == name else None

    return number


def _template_index(template: str):
    """:func:`template_matcher`, or None for a template it refuses (the decoder then says so)."""
    try:
        return template_matcher(template)
    except ValueError:
        return None


def check_jpeg_frames(folder: str, template: str = "{:05d}.jpg", num_frames: Optional[int] = None) -> int:
    """Check a JPEG frame folder holds every frame file ``1..n``; return ``n``.

    ``num_frames``: the count the list gives (the files ``1..num_frames`` must all be
    there); None: ``n`` is the highest frame number found in the folder. One directory
    listing, no file is opened.

    Raises :class:`DecodeError` (``path`` = the folder) when the folder is missing, holds
    no frame file, or lacks a frame file in ``1..n``: the reason names the first missing
    file, so a gap is an error at train, evaluation and predict alike (never a silently
    shorter video).
    """
    if not os.path.isdir(folder):
        raise DecodeError(folder, "frame folder not found")
    try:
        names = set(os.listdir(folder))
    except OSError as exc:
        raise DecodeError(folder, f"cannot list the frame folder ({exc})") from None
    if num_frames is None:
        index_of = _template_index(template)
        if index_of is None:  # unusual template: consecutive files from 1
            n = 0
            while template.format(n + 1) in names:
                n += 1
        else:
            n = max((i for i in map(index_of, names) if i is not None), default=0)
        if n == 0:
            raise DecodeError(folder, f"no frame files matching template {template!r}")
    else:
        n = int(num_frames)
    missing = [i for i in range(1, n + 1) if template.format(i) not in names]
    if missing:
        first = os.path.join(folder, template.format(missing[0]))
        source = "the list gives" if num_frames is not None else "the folder has frame files up to"
        raise DecodeError(folder, f"frame file {first} not found ({len(missing)} of frames 1..{n} missing; "
                                  f"{source} {n})")
    return n


def read_jpeg_frames(folder: str, indices: Sequence[int], template: str = "{:05d}.jpg") -> np.ndarray:
    """``uint8[len(indices), H, W, 3]`` RGB from ``folder/template.format(index + 1)``.

    Frame files are numbered from 1 (the official ``index_bias``); each distinct file is
    read once.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isdir(folder):
        raise DecodeError(folder, "frame folder not found")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    cache: Dict[int, np.ndarray] = {}
    out = None
    for j, i in enumerate(idx):
        i = int(i)
        if i not in cache:
            path = os.path.join(folder, template.format(i + 1))
            try:
                with Image.open(path) as img:
                    cache[i] = np.asarray(img.convert("RGB"))
            except FileNotFoundError:
                raise DecodeError(path, "frame file not found") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DecodeError(path, f"unreadable image ({type(exc).__name__}: {exc})") from None
        frame = cache[i]
        if out is None:
            out = np.empty((idx.size,) + frame.shape, dtype=np.uint8)
        elif frame.shape != out.shape[1:]:
            raise DecodeError(folder, f"frame {i + 1} has size {frame.shape[:2]}, expected {out.shape[1:3]}")
        out[j] = frame
    if out is None:
        raise ValueError("no frame indices requested")
    return out
