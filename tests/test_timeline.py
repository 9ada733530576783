"""Timeline inference over a whole video and over a live stream (tdsk.timeline, docs/timeline.md).

* the split forward (``frame_taps`` + ``forward_from_taps``) equals the standard forward;
* reuse of the frozen taps gives the logits of independent per-window inference
  (frames decoded directly with ``tdsk.data.read_video_frames`` at the window's indices,
  the test transform, the standard ``model(video)``), <= 1e-5, and also ``reuse=False``;
* the JSON / CSV / PNG outputs and the smoothed segments;
* a stream of a file's frames gives the timeline's rows;
* a 10-minute video: the output covers the whole duration, the engine holds a bounded
  number of frames, and the process's peak RSS grows by less than a stated bound (subprocess).
"""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from tdsk.data import read_video_frames  # noqa: E402
from tdsk.data.transforms import EvalTransform, normalize  # noqa: E402
from tdsk.models import build_model  # noqa: E402
from tdsk.timeline import (segment_spacing, smooth_segments, stream, timeline,  # noqa: E402
                           window_frame_indices, VideoFrames)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_video(path, n, fps, size=48, seed=0):
    """A textured background with a white square moving right (h264, PyAV)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with av.open(path, "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(n):
            f = bg.copy()
            x = (i * 2) % (size - 10)
            f[10:20, x:x + 10] = 255
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def demo_model():
    torch.manual_seed(0)
    model = build_model("demo", clip_pretrained=None).eval()
    # non-trivial BatchNorm statistics, so that eval-mode BN is not the identity
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return model


def reference_logits(model, path, first_segment, spacing, n, size=32):
    idx = window_frame_indices(first_segment, model.num_segments, spacing, model.num_local, n)
    frames = read_video_frames(path, idx.reshape(-1))
    video = normalize(EvalTransform(size, size, crops=1)(frames)[0])
    video = video.reshape(1, model.num_segments, model.num_local, 3, size, size)
    with torch.no_grad():
        return model(video)[0]


def test_split_forward_equals_forward():
    torch.manual_seed(0)
    model = build_model("tiny", clip_pretrained=None).eval()
    video = torch.randn(2, 4, 5, 3, 64, 64)
    with torch.no_grad():
        ref = model(video)
        centres = video[:, :, 2].reshape(8, 3, 64, 64)
        per_frame = [model.frame_taps(centres[i:i + 1]) for i in range(8)]   # one frame at a time
        taps = [torch.cat([p[l] for p in per_frame]) for l in range(len(per_frame[0]))]
        out = model.forward_from_taps(video, taps)
        feats = model.features_from_taps(video, model.frame_taps(centres))
        proj = [torch.cat([model.project_taps(p)[l] for p in per_frame]) for l in range(len(taps))]
        out_proj = model.forward_from_taps(video, proj, projected=True)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out_proj - ref).abs().max().item() <= 1e-5
    assert proj[0].shape == (8, 17, 128)                       # D wide (side_dim), not C
    assert torch.equal(model.head(feats), ref)   # same batch: the same numbers
    with pytest.raises(ValueError, match="B\\*T"):
        model.forward_from_taps(video, [t[:4] for t in taps])
    with pytest.raises(ValueError, match="projected"):
        model.forward_from_taps(video, taps, projected=True)


def test_spacing_rule():
    assert segment_spacing(12, 8) == 6        # 4 s clip, 48 frames / 8 segments: 0.5 s
    assert segment_spacing(30, 8) == 15
    assert segment_spacing(4, 8) == 2
    assert segment_spacing(1, 8) == 1
    assert window_frame_indices(0, 2, 6, 5, 10).tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 9, 9]]


@pytest.mark.parametrize("stride", [1, 3])
def test_reuse_equals_independent_windows(tmp_path, demo_model, stride):
    path = write_video(str(tmp_path / "v.mp4"), 71, 12)      # 71 frames: the grid stops short of the end
    res = timeline(demo_model, path, stride=stride, keep_logits=True, plot=False)
    naive = timeline(demo_model, path, stride=stride, keep_logits=True, plot=False, reuse=False)
    s, n = res.meta["spacing_frames"], res.meta["frames"]
    assert (s, n) == (6, 71)
    assert [r["first_segment"] for r in res.rows] == [r["first_segment"] for r in naive.rows]
    firsts = [r["first_segment"] for r in res.rows]
    assert firsts[-1] == -(-n // s) - 8                        # the last window ends at the last segment
    # the frozen CLIP ran once per segment used, not once per window segment
    assert res.meta["clip_frames_run"] == len({j for f in firsts for j in range(f, f + 8)})
    assert naive.meta["clip_frames_run"] == 8 * len(firsts)
    for r, q in zip(res.rows, naive.rows):
        ref = reference_logits(demo_model, path, r["first_segment"], s, n)
        assert (r["logits"] - ref).abs().max().item() <= 1e-5
        assert (q["logits"] - ref).abs().max().item() <= 1e-5
        assert r["start"] == pytest.approx(r["first_segment"] * s / 12)
    assert res.rows[-1]["end"] == pytest.approx(n / 12)


def test_outputs_and_segments(tmp_path, demo_model):
    path = write_video(str(tmp_path / "clip.mp4"), 60, 12)
    res = timeline(demo_model, path, out_dir=str(tmp_path / "out"), top_k=3)
    assert set(res.paths) == {"json", "csv", "png"}
    data = json.load(open(res.paths["json"]))
    assert data["spacing_frames"] == 6 and data["window_seconds"] == pytest.approx(4.0)
    assert len(data["windows"]) == len(res.rows) and all(len(w["top"]) == 3 for w in data["windows"])
    rows = list(csv.reader(open(res.paths["csv"])))
    assert rows[0] == ["window", "start", "end", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    assert len(rows) == len(res.rows) + 1
    from PIL import Image

    with Image.open(res.paths["png"]) as im:
        assert im.size[0] > 400 and im.size[1] > 200
    segs = data["segments"]
    assert segs[0]["start"] == 0 and segs[-1]["end"] == pytest.approx(5.0)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(segs, segs[1:]))
    assert sum(s["windows"] for s in segs) == len(res.rows)


def test_smooth_segments_merges_runs():
    def row(t, i):
        return {"time": t, "end": t + 2, "top": [{"index": i, "label": "abc"[i], "prob": 0.5}]}

    segs = smooth_segments([row(2, 0), row(3, 0), row(4, 1), row(5, 0)], duration=7)
    assert [(s["label"], s["start"], s["end"], s["windows"]) for s in segs] == [
        ("a", 0.0, 3.5, 2), ("b", 3.5, 4.5, 1), ("a", 4.5, 7.0, 1)]


def test_stream_equals_timeline(tmp_path, demo_model):
    path = write_video(str(tmp_path / "s.mp4"), 50, 10)
    res = timeline(demo_model, path, stride=2, keep_logits=True, plot=False)
    frames = iter(VideoFrames(path))                           # one frame at a time, as from a camera
    rows = list(stream(demo_model, frames, fps=10, stride=2, keep_logits=True))
    assert len(rows) == len(res.rows) > 1
    for a, b in zip(rows, res.rows):
        assert torch.equal(a.pop("logits"), b.pop("logits"))
        assert a == b


def test_short_video_one_window(tmp_path, demo_model):
    path = write_video(str(tmp_path / "short.mp4"), 9, 12)    # 2 segments of 6 frames < one window
    res = timeline(demo_model, path, keep_logits=True, plot=False)
    assert len(res.rows) == 1 and res.rows[0]["first_segment"] == 0
    ref = reference_logits(demo_model, path, 0, 6, 9)
    assert (res.rows[0]["logits"] - ref).abs().max().item() <= 1e-5
    assert res.rows[0]["end"] == pytest.approx(9 / 12)


#: peak-RSS growth allowed over the whole 10-minute run, after the first window. The video
#: decoded whole would take 66 MB as uint8 (2400 x 96 x 96 x 3), 29 MB more as normalised frames.
RSS_BOUND_MB = 24

_LONG_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch, av
    path, size, fps, n = sys.argv[1], 96, 4, 2400          # 10 minutes at 4 fps
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with av.open(path, "w") as c:
        st = c.add_stream("libx264", rate=fps); st.width = st.height = size; st.pix_fmt = "yuv420p"
        st.options = {"crf": "23", "preset": "ultrafast"}
        for i in range(n):
            f = bg.copy(); x = (i * 3) % (size - 16); f[40:56, x:x + 16] = 255
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): c.mux(p)
        for p in st.encode(): c.mux(p)
    from tdsk.models import build_model
    from tdsk.timeline import TimelineEngine, VideoFrames, stream, smooth_segments
    torch.manual_seed(0)
    model = build_model("demo", clip_pretrained=None).eval()
    frames = VideoFrames(path)
    eng = TimelineEngine(model, frames.fps, stride=1)
    it = stream(None, frames, frames.fps, engine=eng)
    rows = [next(it)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows += list(it)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    segs = smooth_segments(rows, eng.frames_seen / eng.fps)
    print(json.dumps({"growth_mb": (peak - base) / 1024, "frames": eng.frames_seen, "rows": len(rows),
                      "first": rows[0]["start"], "last": rows[-1]["end"], "buffered": eng.max_buffered_frames,
                      "clip_frames": eng.taps_computed, "seg_start": segs[0]["start"], "seg_end": segs[-1]["end"],
                      "starts": [r["start"] for r in rows]}))
""")


def test_ten_minute_video_bounded_memory(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _LONG_SCRIPT, str(tmp_path / "long.mp4")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["frames"] == 2400
    assert r["first"] == 0.0 and r["last"] == pytest.approx(600.0)
    assert r["seg_start"] == 0.0 and r["seg_end"] == pytest.approx(600.0)
    # spacing 2 frames (0.5 s) at 4 fps: 1200 segments, windows every 0.5 s up to the end
    assert r["rows"] == 1200 - 8 + 1 and r["clip_frames"] == 1200
    assert np.allclose(np.diff(r["starts"]), 0.5)
    assert r["buffered"] <= 5 + 8 * 5                          # M recent frames + T segments of M frames
    assert r["growth_mb"] < RSS_BOUND_MB, r


def test_recognizer_input(tmp_path, demo_model):
    from tdsk.demo import CLASSES
    from tdsk.inference import Recognizer

    path = write_video(str(tmp_path / "r.mp4"), 60, 12)
    rec = Recognizer(demo_model, {"model": demo_model.config, "data": {"resize": 32, "input_size": 32}},
                     list(CLASSES), device="cpu", precision="fp32")
    a = timeline(rec, path, keep_logits=True, plot=False)
    b = timeline(demo_model, path, keep_logits=True, plot=False)
    assert all(torch.equal(x["logits"], y["logits"]) for x, y in zip(a.rows, b.rows)) and len(a.rows) == len(b.rows)
    assert all(t["label"] == CLASSES[t["index"]] for r in a.rows for t in r["top"])


def test_stride_in_seconds_is_rounded_to_segments(tmp_path, demo_model):
    from tdsk.timeline import stride_segments

    assert stride_segments(None, None, 0.5) == 1 and stride_segments(3, None, 0.5) == 3
    assert stride_segments(None, 1.2, 0.5) == 2 and stride_segments(None, 0.1, 0.5) == 1
    for args, message in (((2, 1.0), "not both"), ((None, 0.0), "stride_seconds must be > 0"),
                          ((0, None), "whole number of segments >= 1"), ((1.5, None), "whole number")):
        with pytest.raises(ValueError, match=message):
            stride_segments(*args, 0.5)
    path = write_video(str(tmp_path / "v.mp4"), 120, 10)
    by_seconds = timeline(demo_model, path, stride_seconds=1.0, plot=False)   # spacing 5 frames = 0.5 s
    by_segments = timeline(demo_model, path, stride=2, plot=False)
    assert by_seconds.meta["stride_segments"] == 2 and by_seconds.meta["stride_seconds"] == pytest.approx(1.0)
    assert [r["top"] for r in by_seconds.rows] == [r["top"] for r in by_segments.rows]


def test_plot_colours_follow_the_class_and_truth_row(tmp_path, monkeypatch):
    """A class keeps its colour whatever else a video shows (colours went by rank in one video);
    the plot's x axis is in seconds, the smoothed bar is "predicted" and a given ground truth is
    a "truth" row under it."""
    import matplotlib.figure

    from tdsk.report import class_colours, plot_timeline
    from tdsk.timeline import TimelineResult

    a, b = class_colours([3, 7]), class_colours([7, 23, 3])
    assert a[3] == b[3] and a[7] == b[7] and b[23] != b[3]          # 23 % 20 == 3: next free slot
    rows = [{"window": k, "start": k * 1.0, "end": k + 2.0, "time": k + 1.0,
             "top": [{"index": 7 - k, "label": f"c{7 - k}", "prob": 0.8}, {"index": 1, "label": "c1", "prob": 0.1}]}
            for k in range(3)]
    segs = [{"start": 0.0, "end": 2.0, "index": 7, "label": "c7"}, {"start": 2.0, "end": 4.0, "index": 5, "label": "c5"}]
    res = TimelineResult(rows=rows, segments=segs, meta={"duration": 4.0, "source": "v.mp4"})
    seen = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (seen.append(fig), real(fig, *a, **k)))
    out = plot_timeline(res, str(tmp_path / "t.png"), truth=[{"start": 0.0, "end": 2.5, "label": "c7"},
                                                              {"start": 2.5, "end": 4.0, "label": "c6"}])
    assert os.path.getsize(out) > 0
    axes = seen[0].axes
    labels = [[t.get_text() for t in ax.get_yticklabels()] for ax in axes]
    assert ["predicted"] in labels and ["truth"] in labels
    assert axes[-1].get_xlabel() == "time (s)"
    colours = class_colours([7, 6, 5, 1])
    truth_bar = [p for p in axes[-1].patches][0]
    assert tuple(truth_bar.get_facecolor()[:3]) == pytest.approx(colours[7][:3])


def test_window_grid_differs_from_the_clip_sampler_as_documented():
    """docs/timeline.md: the timeline's segment grid (centres j*s + s//2) is not what the
    recipe's evaluation sampler picks from the same window's frames; the documented frames."""
    from tdsk.data.sampling import sample_indices

    assert window_frame_indices(0, 8, 6, 5)[:, 2].tolist() == [3, 9, 15, 21, 27, 33, 39, 45]
    assert sample_indices(48, 8, 5, "test")[:, 2].tolist() == [2, 8, 14, 20, 26, 31, 37, 43]
