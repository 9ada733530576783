"""The embedded demo after training (tdsk.demo.analyse): patch boxes, CAM hit rate, the
explain picture and the timeline over joined held-out clips, and run_demo end to end."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from helpers import demo_sources  # noqa: E402
from tdsk import demo  # noqa: E402


def _render_recording(label, seed):
    """``_render``'s output with the ``paste`` boxes it drew the patch into, recorded."""
    from PIL import Image

    pasted = []
    paste = Image.Image.paste

    def recording_paste(self, im, box=None, mask=None):
        if isinstance(im, Image.Image) and box is not None and len(box) == 2:
            pasted.append((box[0], box[1], box[0] + im.width, box[1] + im.height))
        return paste(self, im, box, mask)

    spec = demo.DemoSpec()
    sources = demo_sources()
    Image.Image.paste = recording_paste
    try:
        frames, boxes = demo._render(spec, label, np.random.default_rng([spec.seed, 9, seed, label]), sources)
    finally:
        Image.Image.paste = paste
    return frames, boxes, pasted


@pytest.mark.parametrize("name", demo.CLASSES)
def test_render_boxes_cover_the_patch(name):
    frames, boxes, pasted = _render_recording(demo.CLASSES.index(name), 3)
    f, s = frames.shape[:2]
    assert boxes.shape == (f, 4) and boxes.dtype == np.int64 and len(pasted) == f
    for k in range(f):
        x0, y0, x1, y1 = boxes[k]
        px0, py0, px1, py1 = pasted[k]
        assert 0 <= x0 < x1 <= s and 0 <= y0 < y1 <= s
        assert px0 <= x0 and py0 <= y0 and x1 <= px1 and y1 <= py1      # inside what was pasted
        if name in ("left", "right", "up", "down", "still"):             # an unrotated square: all of it
            assert (x0, y0, x1, y1) == (max(0, px0), max(0, py0), min(s, px1), min(s, py1))
    # the background is static: between two frames, only pixels in one of the two boxes change
    for k in range(f - 1):
        outside = np.ones((s, s), bool)
        for x0, y0, x1, y1 in (boxes[k], boxes[k + 1]):
            outside[y0:y1, x0:x1] = False
        assert np.array_equal(frames[k][outside], frames[k + 1][outside])


def test_generate_writes_boxes(tmp_path):
    demo_sources()
    root = demo.generate(demo.DemoSpec(seed=4, train_per_class=1, val_per_class=1), str(tmp_path), progress=False)
    boxes = demo.read_boxes(root)
    listed = [line.split()[0] for split in ("train", "val") for line in open(os.path.join(root, f"{split}.txt"))]
    assert sorted(boxes) == sorted(listed)
    frames, again = demo._render(demo.DemoSpec(seed=4), 2, np.random.default_rng([4, 1, 0, 2]), demo_sources())
    assert np.array_equal(boxes["videos/val/up_0000.mp4"], again)
    os.remove(os.path.join(root, "boxes.json"))
    with pytest.raises(FileNotFoundError, match="older tdsk"):
        demo.read_boxes(root)


def test_segment_boxes_union_and_scale():
    boxes = np.array([[10, 20, 30, 40], [14, 18, 34, 38], [0, 0, 1, 1]])
    got = demo.segment_boxes(boxes, np.array([[0, 1], [2, 2]]), 0.5)
    assert got.tolist() == [[5, 9, 17, 20], [0, 0, 1, 1]]            # floor the start, ceil the end


def _row(t, index, start, end):
    return {"time": t, "start": start, "end": end, "top": [{"index": index, "label": demo.CLASSES[index], "prob": .9}]}


def test_part_accuracy_counts():
    parts = [{"label": "left", "index": 0, "start": 0.0, "end": 2.0}, {"label": "up", "index": 2, "start": 2.0,
                                                                          "end": 4.0}]
    rows = [_row(1.0, 0, 0.0, 2.0), _row(1.5, 1, 0.5, 2.5), _row(2.5, 0, 1.5, 3.5), _row(3.0, 2, 2.0, 4.0),
            _row(4.0, 2, 3.0, 5.0)]
    segments = [{"index": 0, "start": 0.0, "end": 1.25}, {"index": 1, "start": 1.25, "end": 1.75},
                {"index": 0, "start": 1.75, "end": 2.75}, {"index": 2, "start": 2.75, "end": 4.0}]
    acc = demo.part_accuracy(rows, segments, parts)
    p0, p1 = acc["parts"]
    assert (p0["windows"], p0["windows_right"], p0["part_right"]) == (2, 1, True)
    assert (p1["windows"], p1["windows_right"], p1["part_right"]) == (3, 2, True)   # the end belongs to the last
    assert p0["time_right"] == pytest.approx((1.25 + 0.25) / 2) and p1["time_right"] == pytest.approx(1.25 / 2)
    assert acc["windows"] == pytest.approx(3 / 5) and acc["time"] == pytest.approx(2.75 / 4)
    rows[0]["top"][0].update(index=5, label="rotate_ccw")                 # the window on part 0 now wrong
    acc = demo.part_accuracy(rows, segments, parts)
    assert acc["parts"][0]["part_right"] is False and acc["parts"][0]["part_label"] == "rotate_ccw"
    assert acc["parts_right"] == 0.5


def test_run_demo_end_to_end(tmp_path, capsys):
    """A tiny demo: both models trained, then the CAM hit rates, the explain picture and the
    timeline over joined held-out clips, printed and in demo_summary.json; the baseline's
    checkpoint reloads as the baseline (its variant is in the stored recipe)."""
    from PIL import Image

    from tdsk.inference import Recognizer
    from tdsk.models.baseline import MeanPoolCLIP
    from tdsk.train import run_demo

    demo_sources()
    spec = demo.DemoSpec(seed=21, train_per_class=2, val_per_class=2)
    summary = run_demo(["solver.epochs=1", "solver.warmup_epochs=0", "train.tensorboard=false",
                        "train.num_workers=0"], cache=str(tmp_path / "cache"), output=str(tmp_path / "run"),
                       progress=False, spec=spec)
    out = capsys.readouterr().out
    n_val = spec.val_per_class * len(demo.CLASSES)
    for variant in ("tds_clip", "baseline"):
        cam = summary["cam"][variant]
        assert cam["segments"] == n_val * 8 and 0 <= cam["hits"] <= cam["segments"]
        assert cam["hit_rate"] == pytest.approx(cam["hits"] / cam["segments"])
        assert 0.0 < cam["chance"] < 1.0 and 0.5 < cam["motion_hit_rate"] <= 1.0
        assert summary["runs"][variant]["top1"] == pytest.approx(cam["top1"])  # the same frames as validation
    assert isinstance(Recognizer.from_pretrained(summary["runs"]["baseline"]["checkpoint"], device="cpu").model,
                      MeanPoolCLIP)
    assert "CAM hit rate" in out and "per-part accuracy" in out and summary["timeline"]["png"] in out
    with Image.open(summary["timeline"]["png"]) as im:
        assert im.format == "PNG"
    with Image.open(summary["explain"]["png"]) as im:
        assert im.format == "PNG"
    t = summary["timeline"]
    assert [p["label"] for p in t["parts"]] == list(demo.TIMELINE_ORDER)
    assert t["parts"][-1]["end"] == pytest.approx(len(demo.CLASSES) * spec.frames / spec.fps)
    saved = json.load(open(t["json"]))
    assert saved["duration"] == pytest.approx(t["parts"][-1]["end"]) and saved["spacing_frames"] == 2
    assert sum(p["windows"] for p in t["parts"]) == len(saved["windows"])
    hold = summary["timeline_hold2"]
    assert hold["parts"][-1]["end"] == pytest.approx(len(demo.CLASSES) * (spec.frames + 4) / spec.fps)
    with open(tmp_path / "run" / "demo_summary.json") as f:
        assert json.load(f)["cam"]["tds_clip"]["segments"] == n_val * 8


def test_cam_localisation_counts_grid_peaks_in_the_patch(tmp_path):
    """The hit count is that of each clip's own Grad-CAM grid: a hit is a maximal cell whose
    centre lies in the segment's patch box; chance counts the cell centres inside the boxes."""
    from tdsk.data import normalize, sample_indices
    from tdsk.explain import grad_cam_batch
    from tdsk.models import build_model

    demo_sources()
    root = demo.generate(demo.DemoSpec(seed=6, train_per_class=1, val_per_class=1), str(tmp_path), progress=False)
    torch.manual_seed(0)
    model = build_model("demo", clip_pretrained=None).eval()
    res = demo.cam_localisation(model, root, batch_size=4)
    frames, _ = demo._decode_split(os.path.join(root, "val.txt"), root, 32)
    idx = np.asarray(sample_indices(frames.shape[1], 8, 5, "val"))
    boxes = demo.read_boxes(root)
    hits, inside = 0, []
    for k, name in enumerate(demo.CLASSES):
        video = normalize(frames[k:k + 1][:, torch.from_numpy(idx.reshape(-1))]).view(1, 8, 5, 3, 32, 32)
        cam = grad_cam_batch(model, video, upsample=False)[0][0]      # [8, 4, 4]: 8 px cells
        for t in range(8):
            b = boxes[f"videos/val/{name}_0000.mp4"][idx[t]] / 2.0     # 64 px frames, 32 px input
            x0, y0 = np.floor(b[:, :2].min(0))
            x1, y1 = np.ceil(b[:, 2:].max(0))
            i, j = divmod(int(cam[t].argmax()), 4)
            cy, cx = 8 * i + 4, 8 * j + 4
            hits += bool(cam[t].max() > 0 and x0 <= cx < x1 and y0 <= cy < y1)
            centres = 8 * np.arange(4) + 4
            inside.append(((centres >= x0) & (centres < x1)).mean() * ((centres >= y0) & (centres < y1)).mean())
    assert res["grid"] == 4 and res["segments"] == 8 * len(demo.CLASSES)
    assert res["hits"] == hits and res["chance"] == pytest.approx(float(np.mean(inside)))
    with pytest.raises(ValueError, match="batch_size"):
        demo.cam_localisation(model, root, batch_size=0)


def test_segment_boxes_skip_empty_frames():
    boxes = np.array([[10, 20, 30, 40], [0, 0, 0, 0]])
    assert demo.segment_boxes(boxes, np.array([[0, 1], [1, 1]]), 1.0).tolist() == [[10, 20, 30, 40], [0, 0, 0, 0]]


def test_concat_parts_refuses_bad_arguments(tmp_path):
    demo_sources()
    root = demo.generate(demo.DemoSpec(seed=6, train_per_class=1, val_per_class=1), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="hold must be >= 0"):
        demo.concat_parts(root, str(tmp_path / "x.mp4"), hold=-1)
    with pytest.raises(FileNotFoundError, match="fewer than 2 clips of 'right'"):
        demo.concat_parts(root, str(tmp_path / "x.mp4"), clips_per_part=2)


def test_part_accuracy_ties_go_to_the_centred_window():
    """A part longer than a window: of the windows inside it, the one centred on it decides."""
    parts = [{"label": "up", "index": 2, "start": 0.0, "end": 2.0}]
    rows = [_row(0.75, 0, 0.0, 1.5), _row(1.0, 2, 0.25, 1.75), _row(1.25, 0, 0.5, 2.0)]
    acc = demo.part_accuracy(rows, [], parts)
    assert acc["parts"][0]["part_right"] is True and acc["parts"][0]["part_label"] == "up"


def test_run_demo_reports_training_when_the_analysis_fails(tmp_path, capsys, monkeypatch):
    from tdsk.train import run_demo

    demo_sources()

    def broken(*args, **kwargs):
        raise RuntimeError("no encoder here")

    from tdsk.cli.demo import analysis

    monkeypatch.setattr(analysis, "analyse", broken)
    summary = run_demo(["solver.epochs=1", "solver.warmup_epochs=0", "train.tensorboard=false",
                        "train.num_workers=0"], cache=str(tmp_path / "cache"), output=str(tmp_path / "run"),
                       progress=False, spec=demo.DemoSpec(seed=22, train_per_class=1, val_per_class=1),
                       baseline=False)
    captured = capsys.readouterr()
    assert "after-training analysis failed (RuntimeError: no encoder here)" in captured.err
    assert "top-1" in captured.out and "CAM hit rate" not in captured.out
    assert summary["analysis_error"] == "RuntimeError: no encoder here" and "tds_clip" in summary["runs"]
    assert json.load(open(tmp_path / "run" / "demo_summary.json"))["runs"]["tds_clip"]["top1"] >= 0.0


def test_the_timeline_table_says_correct_not_right():
    """"right" was both a verdict and a class of the demo in the same column."""
    from tdsk.cli.demo.analysis import report_lines

    parts = [{"label": "right", "start": 0.0, "end": 1.3, "part_right": True, "part_label": "right", "windows": 2,
              "windows_right": 2, "time_right": 1.0},
             {"label": "left", "start": 1.3, "end": 2.7, "part_right": False, "part_label": "right", "windows": 2,
              "windows_right": 0, "time_right": 0.0}]
    lines = report_lines({"timeline": {"parts": parts, "parts_right": 0.5, "windows": 0.5, "time": 0.5, "png": "t.png"},
                          "explain": {"png": "e.png", "clip": "c.mp4", "label": "up", "prob": 0.9}})
    rows = [x for x in lines if x.strip().startswith(("1 ", "2 "))]
    assert "correct" in rows[0] and rows[0].count("right") == 1 and "wrong (right)" in rows[1]  # the class only
