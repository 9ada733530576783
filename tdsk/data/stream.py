"""Frames of a video file or a live source (an rtsp/http/udp URL, a camera) for the timeline and
``predict --stream`` (docs/timeline.md): :class:`VideoFrames` decodes them in order with PyAV,
:func:`live_source` tells a live source from a file."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np


def live_source(source: str) -> Tuple[str, Optional[str]]:
    """``(what to open, container format)`` for a stream source: a URL (``rtsp://``, ``http://``,
    ``udp://``, ...) as given; a camera index ``"0"`` as ``/dev/video0`` (v4l2; a file named
    ``0`` is ``./0``); a ``/dev/video*`` device with v4l2; anything else (a file) as given."""
    src = os.fspath(source)
    if src.isascii() and src.isdecimal():  # a file named "0" is "./0"
        return f"/dev/video{int(src)}", "v4l2"
    if src.startswith("/dev/video"):
        return src, "v4l2"
    return src, None


#: a live source stating more frames per second than this has no real rate (see VideoFrames)
MAX_GUESSED_FPS = 240.0


class VideoFrames:
    """A video's frames as a stream: ``uint8 [H, W, 3]`` RGB, presentation order, one at a
    time (PyAV sequential decode; display rotation applied like :class:`tdsk.data.PyAVVideo`).

    ``path``: a file, or with ``live=True`` anything PyAV opens (an ``rtsp://`` / ``http://``
    URL, a ``/dev/video0`` camera, see :func:`live_source`). ``format`` / ``options``: PyAV's
    container format and options (e.g. ``{"rtsp_transport": "tcp"}``); ``timeout``: seconds to
    wait for a live source's data. ``fps``: the frame rate to use (default the stream's; a live
    source without one needs it). ``fps`` (average frame rate), ``num_frames_hint`` (the
    container's count or duration x fps; 0 when unknown) are known before iterating.
    """

    def __init__(self, path: str, threads: int = 0, autorotate: bool = True, *, live: bool = False,
                 format: Optional[str] = None, options: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = None, fps: Optional[float] = None):
        import av

        from tdsk.data.decoders import DecodeError

        self.path = os.fspath(path)
        self.autorotate = autorotate
        self.live = bool(live)
        if not self.live and not os.path.isfile(self.path):
            raise DecodeError(self.path, "file not found")
        kwargs: Dict[str, Any] = {}
        if format:
            kwargs["format"] = format
        if options:
            kwargs["options"] = {str(k): str(v) for k, v in options.items()}
        if timeout:
            kwargs["timeout"] = float(timeout)
        try:
            self._container = av.open(self.path, **kwargs)
        except Exception as exc:
            what = "cannot open the stream" if self.live else "cannot open as a video"
            raise DecodeError(self.path, f"{what} ({type(exc).__name__}: {exc})") from None
        if not self._container.streams.video:
            self._container.close()
            raise DecodeError(self.path, "no video stream")
        st = self._container.streams.video[0]
        if threads != 1:
            st.thread_type = "AUTO"
            st.codec_context.thread_count = int(threads)
        self._stream = st
        rate = fps or st.average_rate or st.guessed_rate or st.base_rate
        if not rate or not float(rate) > 0:
            self._container.close()
            raise DecodeError(self.path, "no frame rate in the stream; give the source's rate "
                                         "(--fps, or fps= / tdsk.timeline.stream(frames, fps=...))")
        if self.live and not fps and float(rate) > MAX_GUESSED_FPS:
            # live H.264/RTSP streams often state no rate, and the "guess" is the time base (90000)
            self._container.close()
            raise DecodeError(self.path, f"the stream's frame rate reads {float(rate):g} fps, which is not a camera's; "
                                         "give the source's rate (--fps, or fps=)")
        self.fps = float(rate)
        hint = 0 if self.live else int(st.frames or 0)
        if not hint and not self.live and self._container.duration:
            hint = int(round(self._container.duration / 1e6 * self.fps))
        self.num_frames_hint = hint

    def __iter__(self) -> Iterator[np.ndarray]:
        from tdsk.data.decoders import _frame_orientation, _orient, _to_rgb

        import av

        from tdsk.data.decoders import DecodeError

        orientation, known = None, not self.autorotate
        try:
            for frame in self._container.decode(self._stream):
                if not known:
                    orientation, known = _frame_orientation(frame, self.path), True
                yield _orient(_to_rgb(frame), orientation)
        except av.error.ExitError as exc:  # the read timeout of a live source
            raise DecodeError(self.path, f"no data from the source within the timeout ({exc})") from None
        except av.error.FFmpegError as exc:  # not all of them are OSError (e.g. HTTPError, UnknownError)
            raise DecodeError(self.path, f"reading failed ({type(exc).__name__}: {exc})") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
