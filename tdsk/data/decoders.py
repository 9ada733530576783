"""CPU decoders: PyAV for video files, Pillow for JPEG frame folders.

Both return exactly the requested 0-based frame indices as ``uint8[N, H, W, 3]`` RGB,
in the order asked (repeats allowed), and raise :class:`DecodeError` for anything that
makes a sample unusable (missing file, not a video, truncated or corrupt stream, zero
frames, a requested frame the stream does not deliver, an unreadable JPEG).

Frame ``i`` of a video is the ``i``-th frame in presentation order. :class:`PyAVVideo`
builds that index from the demuxed packets (no decoding, like decord's index), so the
frame count is exact and every frame can be reached by a seek to the keyframe before it.
It decodes sequentially while the next wanted frame is near, and seeks when seeking
skips at least ``min_seek_gap`` frames: short clips are one sequential pass, long
videos one short burst per sampled segment.
"""
from __future__ import annotations

import bisect
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["DecodeError", "PyAVVideo", "read_video_frames", "read_jpeg_frames", "count_jpeg_frames"]


class DecodeError(RuntimeError):
    """A sample that cannot be decoded. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_REFORMATTER = None
_REFORMATTER_PID = None


def _to_rgb(frame) -> np.ndarray:
    """``uint8[H, W, 3]``; same pixels as ``frame.to_ndarray(format="rgb24")``.

    One reformatter per process keeps its swscale context between frames (a fresh one
    per frame costs ~20x more on small frames). swscale runs single-threaded: its
    default thread pool, once started in a parent process, makes swscale hang in
    forked loader workers (seen with PyAV 18 / FFmpeg 8.1). The reformatter is
    re-created after a fork all the same.
    """
    global _REFORMATTER, _REFORMATTER_PID
    if _REFORMATTER is None or _REFORMATTER_PID != os.getpid():
        from av.video.reformatter import VideoReformatter

        _REFORMATTER = VideoReformatter()
        _REFORMATTER_PID = os.getpid()
    return _REFORMATTER.reformat(frame, format="rgb24", threads=1).to_ndarray()


class PyAVVideo:
    """A video opened with PyAV, indexed by presentation order.

    ``threads``: FFmpeg decoder threads (0 = FFmpeg's choice; 1 suits loader workers,
    which already run in parallel).
    """

    def __init__(self, path: str, threads: int = 1, min_seek_gap: int = 16):
        import av  # lazy: the package must import without PyAV

        self.path = path
        self.min_seek_gap = int(min_seek_gap)
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
        for packet in self.container.demux(self.stream):
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
        declared = int(self.stream.frames or 0) - discarded  # mp4/avi index; 0 (unknown) for webm/mkv
        if declared > len(pts):
            raise DecodeError(self.path, f"truncated: the container declares {declared} frames, "
                                         f"only {len(pts)} are in the file")
        pts.sort()
        self._pts = pts
        self._pts_to_index: Dict[int, int] = {p: i for i, p in enumerate(pts)}
        keys = sorted({self._pts_to_index[p] for p in key_pts})
        self._keyframes = keys if keys and keys[0] == 0 else [0] + keys

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
                    frames[index] = _to_rgb(frame)
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


def read_video_frames(path: str, indices: Sequence[int], threads: int = 1) -> np.ndarray:
    """Open ``path``, return ``uint8[len(indices), H, W, 3]`` at the 0-based ``indices``."""
    with PyAVVideo(path, threads=threads) as video:
        return video.get_frames(indices)


def count_jpeg_frames(folder: str, template: str) -> int:
    """Number of consecutive frame files ``template.format(1), template.format(2), ...``."""
    count = 0
    while os.path.exists(os.path.join(folder, template.format(count + 1))):
        count += 1
    return count


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
