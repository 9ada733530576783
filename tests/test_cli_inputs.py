"""Inputs and failure modes of `python -m tdsk.predict` and `python -m tdsk.evaluate`:
override vs. path arguments, per-file errors and exit codes, non-finite model output,
checks that run before the (long) model load / evaluation pass, and user errors as one
``error: ...`` line with exit code 2 (never a traceback).

Mostly in-process ``main()`` calls on a tiny (32 px) demo model, to stay fast."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import tdsk.engine.evaluation as E
from helpers import run_tool
from video_fixtures import encode_video
import tdsk.evaluate as tev
from tdsk.cli import _common as common
from tdsk import demo
from tdsk import predict as tpr


@pytest.fixture(scope="module")
def tiny(demo_fit):
    """A tiny demo checkpoint (one training step) with its data (the shared one, conftest.py)."""
    run = demo_fit()
    video = os.path.join(run["root"], "videos", "val", "left_0000.mp4")
    assert os.path.isfile(video)
    return {**run, "video": video}


def _no_eval_pass(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the evaluation pass must not start")
    monkeypatch.setattr(E, "evaluate", boom)


def _strict_json(text):
    def bad_constant(name):
        raise ValueError(f"invalid JSON constant {name}")
    return json.loads(text, parse_constant=bad_constant)


# ----------------------------------------------------------------------------- predict: inputs

def test_predict_override_needs_a_known_section_otherwise_it_is_a_video(tiny, tmp_path, capsys):
    named = tmp_path / "a=b.mp4"
    shutil.copy(tiny["video"], named)
    missing = str(tmp_path / "x=1.mp4")
    other = "foo.bar=1"  # no recipe section: a (missing) video, not an override
    rc = tpr.main([tiny["video"], str(named), missing, other, "data.test_clips=1", "--checkpoint", tiny["ckpt"],
                   "--json", "--views", "1x1"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    by_path = {r["path"]: r for r in out}
    assert set(by_path) == {tiny["video"], str(named), missing, other}
    assert len(by_path[str(named)]["top"]) == 5 and len(by_path[tiny["video"]]["top"]) == 5
    assert "no such file" in by_path[missing]["error"] and "no such file" in by_path[other]["error"]
    assert rc == 1
    assert tpr.is_override("data.root=/x") and tpr.is_override("+model.foo=1")
    assert not tpr.is_override("a=b.mp4") and not tpr.is_override("clips/data.x=1.mp4")


def test_predict_each_failure_on_its_own_line_and_exit_code(tiny, tmp_path, capsys):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"\x00" * 100)
    m1, m2 = str(tmp_path / "typo1.mp4"), str(tmp_path / "typo2.mp4")
    rc = tpr.main([m1, tiny["video"], str(bad), m2, "--checkpoint", tiny["ckpt"], "--views", "1x1"])
    lines = capsys.readouterr().out.splitlines()
    errors = [x for x in lines if ": error: " in x]
    assert sorted(x.split(": error: ")[0] for x in errors) == sorted([m1, m2, str(bad)])
    assert any(x.startswith(f"{tiny['video']}  (1 views)") for x in lines)  # the good one still ran
    assert rc == 1  # not 0: some failed (before: 1 only if all failed)
    rc = tpr.main([tiny["video"], "--checkpoint", tiny["ckpt"], "--views", "1x1", "--top", "2"])
    assert rc == 0 and capsys.readouterr().out.count("%") == 2


@pytest.mark.parametrize("top", ["0", "-3", "x"])
def test_predict_top_must_be_at_least_one(tiny, top, capsys):
    with pytest.raises(SystemExit) as exc:
        tpr.main([tiny["video"], "--checkpoint", tiny["ckpt"], "--top", top])
    assert exc.value.code == 2 and "--top" in capsys.readouterr().err


def test_predict_checks_inputs_before_loading_the_model(tiny, tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "typo.mp4")
    seen = {}
    real = common.load_for_inference

    def spy(*a, **k):
        seen["out_before_load"] = capsys.readouterr().out
        return real(*a, **k)

    monkeypatch.setattr(common, "load_for_inference", spy)
    rc = tpr.main([tiny["video"], missing, "--checkpoint", tiny["ckpt"], "--views", "1x1"])
    assert rc == 1 and f"{missing}: error: no such file" in seen["out_before_load"]
    seen.clear()
    rc = tpr.main([missing, str(tmp_path / "typo2.mp4"), "--checkpoint", tiny["ckpt"]])
    assert rc == 1 and "out_before_load" not in seen  # nothing to classify: no model loaded at all
    assert capsys.readouterr().out.count(": error: no such file") == 2


# ----------------------------------------------------------------------------- non-finite output

class _NaNFirstView(torch.nn.Module):
    """Wraps a model; the logits of the first view of the batch become NaN (or -inf)."""

    def __init__(self, inner, value=float("nan")):
        super().__init__()
        self.inner, self.value = inner, value
        self.num_classes = inner.num_classes

    def forward(self, video):
        out = self.inner(video).clone()
        out[0, 0] = self.value
        return out


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_predict_non_finite_output_is_an_error_not_a_prediction(tiny, value, capsys, monkeypatch):
    model, cfg, _ = tev.load_for_inference(tiny["ckpt"])
    res = tpr.predict(_NaNFirstView(model, value), cfg, [tiny["video"]], views=(1, 2))
    assert len(res) == 1 and "top" not in res[0] and "non-finite model output" in res[0]["error"]
    ok = tpr.predict(model, cfg, [tiny["video"]], views=(1, 2))
    assert len(ok[0]["top"]) == 5
    monkeypatch.setattr(common, "load_for_inference", lambda *a, **k: (_NaNFirstView(model, value), cfg, None))
    rc = tpr.main([tiny["video"], "--checkpoint", tiny["ckpt"], "--views", "1x1"])
    out = capsys.readouterr().out
    assert rc == 1 and f"{tiny['video']}: error: non-finite model output" in out and "%" not in out


def test_evaluate_results_json_stays_valid_with_non_finite_values(tiny, tmp_path, capsys, monkeypatch):
    def fake_evaluate(model, loader, **kw):
        probs = np.full((2, len(demo.CLASSES)), 1.0 / len(demo.CLASSES), np.float32)
        r = E.EvalResult(0.5, 1.0, float("nan"), 2, probs, np.array([0, 1]), seconds=0.1)
        r.num_nonfinite = 1
        r.skipped = [{"path": "videos/val/x.mp4", "reason": "cannot decode"}]
        return r

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    out = tmp_path / "ev"
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(out), "--no-progress", "--views", "1x1"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = _strict_json((out / "results.json").read_text())
    assert res["loss"] is None and res["top1"] == 0.5
    assert res["nonfinite"] == 1 and res["skipped"] == [{"path": "videos/val/x.mp4", "reason": "cannot decode"}]
    assert "1 non-finite" in cap.out and "1 skipped" in cap.out
    assert "warning" in cap.err and "videos/val/x.mp4: cannot decode" in cap.err
    assert tev.json_safe({"a": [float("inf"), np.float32(1.5), np.int64(3)]}) == {"a": [None, 1.5, 3]}


# ----------------------------------------------------------------------------- evaluate: checks first

def _write_list(path, lines):
    path.write_text("".join(f"{x}\n" for x in lines))
    return str(path)


def test_evaluate_labels_beyond_num_classes_named_by_file_and_line(tiny, tmp_path, capsys, monkeypatch):
    _no_eval_pass(monkeypatch)
    val = open(os.path.join(tiny["root"], "val.txt")).read().splitlines()
    entries = [x for x in val if x.strip() and not x.startswith("#")]
    rel = entries[0].rsplit(None, 1)[0]
    lst = _write_list(tmp_path / "bad_labels.txt", entries[:2] + [f"{rel} 42"])
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(tmp_path / "o"), "--no-progress",
                   f"data.test_list={lst}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{lst}:3: label 42 but model.num_classes={len(demo.CLASSES)}" in err


def test_evaluate_flip_label_pairs_must_be_classes_of_the_model(tiny, tmp_path, capsys, monkeypatch):
    _no_eval_pass(monkeypatch)
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(tmp_path / "o"), "--no-progress",
                   "data.flip_label_pairs=[[0, 1], [4, 12]]"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.flip_label_pairs[1]" in err and "12" in err, err


def test_evaluate_unwritable_output_is_reported_before_the_pass(tiny, tmp_path, capsys, monkeypatch):
    _no_eval_pass(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(blocker / "sub"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "cannot write" in err, err


# ----------------------------------------------------------------------------- user errors: rc 2

def test_evaluate_user_errors_in_process(tiny, tmp_path, capsys, monkeypatch):
    from tdsk.data.loader import BadSampleError

    # ListFormatError from the test list.
    lst = _write_list(tmp_path / "garbage.txt", ["this line has no label column at all x"])
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(tmp_path / "o1"), f"data.test_list={lst}"])
    assert rc == 2 and f"{lst}:1" in capsys.readouterr().err
    # BadSampleError during the evaluation pass.
    def bad_samples(*a, **k):
        raise BadSampleError("test epoch 0: 3 bad file(s) of 3 samples")
    monkeypatch.setattr(E, "evaluate", bad_samples)
    rc = tev.main(["--checkpoint", tiny["ckpt"], "--out", str(tmp_path / "o2"), "--no-progress"])
    assert rc == 2 and "error: test epoch 0: 3 bad file(s)" in capsys.readouterr().err
    # A directory as checkpoint, a recipe that does not exist, data that is not there.
    for args, expect in [(["--checkpoint", str(tmp_path)], "is a directory"),
                         (["--checkpoint", tiny["ckpt"], "--cfg", "no_such_recipe"], "no_such_recipe"),
                         (["--checkpoint", tiny["ckpt"], f"data.root={tmp_path / 'nope'}"], "dataset not found")]:
        rc = tev.main(args + ["--out", str(tmp_path / "o3")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and expect in err, (args, err)


def test_predict_user_errors_in_process(tiny, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (["--checkpoint", str(junk)], "cannot read checkpoint"),
        (["--checkpoint", str(tmp_path)], "is a directory"),
        (["--checkpoint", tiny["ckpt"], "--labels", str(tmp_path / "nolabels.txt")], "--labels"),
        (["--checkpoint", tiny["ckpt"], "data.test_crops=2"], "test_crops"),
        (["--checkpoint", tiny["ckpt"], "solver.no_such_key=1"], "no_such_key"),
    ]
    for args, expect in cases:
        rc = tpr.main([tiny["video"], *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and expect in err, (args, err)


def test_user_errors_reach_the_terminal_without_traceback(tiny, tmp_path):
    lst = _write_list(tmp_path / "garbage.txt", ["videos/val/left_0000.mp4 notalabel"])
    proc = run_tool("tdsk.evaluate", "--checkpoint", tiny["ckpt"], "--out", tmp_path / "o", "--no-progress",
                    f"data.test_list={lst}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert any(x.startswith("error: ") for x in proc.stderr.splitlines()), proc.stderr
    assert "garbage.txt:1" in proc.stderr
    proc = run_tool("tdsk.predict", tiny["video"], "--checkpoint", tiny["ckpt"], "data.test_crops=2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert any(x.startswith("error: ") for x in proc.stderr.splitlines()), proc.stderr


def test_predict_timeline_and_explain_from_the_cli(tiny, tmp_path, capsys):
    """`python -m tdsk.predict VIDEO --timeline --out DIR --explain DIR`: files written, segments printed."""
    from tdsk.predict import main

    out = tmp_path / "tl"
    rc = main([tiny["video"], "--checkpoint", tiny["ckpt"], "--timeline", "--out", str(out), "--explain",
               str(tmp_path / "ex"), "--device", "cpu", "--precision", "fp32", "--clip-seconds", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert " windows" in text and " s  " in text
    stem = "left_0000_timeline"
    for ext in ("json", "csv", "png"):
        assert (out / f"{stem}.{ext}").stat().st_size > 0
    assert "explained" in text and list((tmp_path / "ex").glob("*.png")) and list((tmp_path / "ex").glob("*.gif"))


# ----------------------------------------------------------------------------- predict --stream

def _joined_video(tiny, path):
    """One val clip of every class joined (9 x 16 frames at 12 fps): several windows."""
    demo.concat_parts(tiny["root"], str(path))
    return str(path)


def _stream_rows(capsys, argv):
    from tdsk.predict import main

    rc = main(argv)
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return rc, rows, captured


STREAM_OPTS = ["--json", "--device", "cpu", "--precision", "fp32", "--clip-seconds", "1.3333", "--top", "3"]


def test_predict_stream_of_a_file_prints_the_timeline_rows(tiny, tmp_path, capsys):
    """`--stream FILE --stride SECONDS`: one JSON row per window, the rows of the timeline of that
    file (the stride in seconds rounded to whole segments: 0.5 s = 3 segments of 1/6 s)."""
    from tdsk.inference import Recognizer

    video = _joined_video(tiny, tmp_path / "joined.mp4")
    rc, rows, captured = _stream_rows(capsys, ["--stream", video, "--checkpoint", tiny["ckpt"], "--stride", "0.5"]
                                      + STREAM_OPTS)
    assert rc == 0, captured.err
    assert "12.00 fps; 1.33 s windows every 0.50 s" in captured.err
    rec = Recognizer.from_pretrained(tiny["ckpt"], device="cpu", precision="fp32")
    ref = rec.timeline(video, stride_seconds=0.5, clip_seconds=1.3333, top_k=3, plot=False)
    assert ref.meta["stride_segments"] == 3 and len(rows) == len(ref.rows) > 5
    for got, want in zip(rows, ref.rows):
        assert (got["start"], got["end"]) == pytest.approx((want["start"], want["end"]))
        assert [t["index"] for t in got["top"]] == [t["index"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-6)
    # --duration: only the first 3 s of the source
    rc, short, _ = _stream_rows(capsys, ["--stream", video, "--checkpoint", tiny["ckpt"], "--stride-segments", "3",
                                         "--duration", "3"] + STREAM_OPTS)
    assert rc == 0 and 0 < len(short) < len(rows) and max(r["end"] for r in short) <= 3.0 + 1e-9
    assert [r["top"][0]["index"] for r in short[:-1]] == [r["top"][0]["index"] for r in rows[:len(short) - 1]]


def test_predict_stream_from_a_network_source(tiny, tmp_path, capsys):
    """A live source: an MPEG-TS stream served over HTTP (http://127.0.0.1) gives the rows of the
    same stream read from the file."""
    import functools
    import http.server
    import socketserver
    import threading

    import av

    frames = []
    for name in ("right", "up", "left"):
        with av.open(os.path.join(tiny["root"], "videos", "val", f"{name}_0000.mp4")) as c:
            frames += [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    ts = tmp_path / "live.ts"
    encode_video(np.stack(frames), str(ts), "libx264", fps=12)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
        rc, live, captured = _stream_rows(capsys, ["--stream", url, "--checkpoint", tiny["ckpt"],
                                                   "--stream-option", "reconnect=0"] + STREAM_OPTS)
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 0, captured.err
    rc, local, _ = _stream_rows(capsys, ["--stream", str(ts), "--checkpoint", tiny["ckpt"]] + STREAM_OPTS)
    assert rc == 0 and len(live) == len(local) > 10
    assert [r["source"] for r in live] == [url] * len(live)
    for a, b in zip(live, local):
        assert a["top"] == b["top"] and (a["start"], a["end"]) == (b["start"], b["end"])


def test_predict_stream_errors_and_ctrl_c(tiny, tmp_path, capsys, monkeypatch):
    from tdsk import timeline as TL
    from tdsk.predict import main

    rc = main(["--stream", str(tmp_path / "no-camera"), "--checkpoint", tiny["ckpt"], "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: --stream: " in err and "cannot open the stream" in err and "Traceback" not in err
    for argv, message in ((["--stream", "0", tiny["video"]], "not both"),
                          (["--stream", tiny["video"], "--timeline"], "--timeline and --explain take VIDEO"),
                          (["--stream", tiny["video"], "--stride", "1", "--stride-segments", "2"], "not both"),
                          (["--stream", tiny["video"], "--stride", "0"], "expected a number > 0"),
                          (["--stream", tiny["video"], "--stream-option", "novalue"], "expected KEY=VALUE")):
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--checkpoint", tiny["ckpt"]])
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    # Ctrl-C while frames arrive: a clean stop with one line, exit 0
    video = _joined_video(tiny, tmp_path / "joined.mp4")
    push = TL.TimelineEngine.push

    def interrupted(self, frame):
        if self.frames_seen >= 40:
            raise KeyboardInterrupt
        return push(self, frame)

    monkeypatch.setattr(TL.TimelineEngine, "push", interrupted)
    rc, rows, captured = _stream_rows(capsys, ["--stream", video, "--checkpoint", tiny["ckpt"]] + STREAM_OPTS)
    assert rc == 0 and rows and "stopped (Ctrl-C) after" in captured.err and "40 frames" in captured.err


def test_predict_stream_source_that_stalls_is_one_error_line(tiny, tmp_path, capsys):
    """A network source that stops sending (half an MPEG-TS stream, then silence) ends with one
    `error:` line after --timeout, exit 1, not a traceback."""
    import http.server
    import socketserver
    import threading

    import av

    ts = tmp_path / "half.ts"
    with av.open(os.path.join(tiny["root"], "videos", "val", "right_0000.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)] * 4
    encode_video(np.stack(frames), str(ts), "libx264", fps=12)
    data = ts.read_bytes()
    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            release.wait(30)                       # silence, connection kept open

        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/half.ts"
        rc, rows, captured = _stream_rows(capsys, ["--stream", url, "--checkpoint", tiny["ckpt"], "--timeout", "1"]
                                          + STREAM_OPTS)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert rc == 1 and "Traceback" not in captured.err, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and url in errors[0] and "window(s)" in errors[0], captured.err


def test_stream_source_with_an_implausible_frame_rate_needs_fps(tmp_path):
    from tdsk.data.decoders import DecodeError
    from tdsk.timeline import VideoFrames

    path = str(tmp_path / "rate.ts")
    encode_video(np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(5)]), path, "libx264", fps=1000)
    assert VideoFrames(path).fps > 240                              # a file: its own rate, whatever it is
    with pytest.raises(DecodeError, match="not a camera's; give the source's rate"):
        VideoFrames(path, live=True)
    live = VideoFrames(path, live=True, fps=25)
    assert live.fps == 25.0 and len(list(live)) == 5
