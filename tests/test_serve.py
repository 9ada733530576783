"""``python -m tdsk.serve`` (tdsk.cli.serve, docs/serving.md): the HTTP API on a tiny model.

* answers equal :meth:`tdsk.Recognizer.predict` on the same file (multipart and raw uploads,
  views, top-k); /timeline and /explain give the library's results; /model, /health, the page;
* a bad, truncated, empty or non-video upload is a 4xx with the reason (never a server path)
  and the next request still works; an oversize upload is a 413 (by Content-Length and while
  streaming); a full server is a 503; a request past the timeout is a 504; the upload folder
  is empty once requests are done;
* requests waiting together run as one batch whose answers are each request's own;
* a bounded load test over loopback (a real uvicorn server, 8 concurrent clients);
* without FastAPI the tool prints one line saying how to install it; ``import tdsk`` never
  imports FastAPI;
* the page in a headless browser, only where ``chromium`` is installed.

The model is a random-init demo TDS-CLIP saved as a model folder (fp32 on the CPU, so answers
compare to 1e-5); the videos are a few frames written with PyAV.
"""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
av = pytest.importorskip("av")

from fastapi.testclient import TestClient  # noqa: E402

import tdsk  # noqa: E402
from tdsk.cli import serve  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5  # batched vs one-at-a-time fp32 forward: float rounding only


def _write_video(path, n=24, fps=12, size=40, seed=0):
    """Noise background, a white square moving right (h264)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"preset": "ultrafast"}
        for i in range(n):
            f = bg.copy()
            x = (i * 2 + seed * 3) % (size - 10)
            f[10:20, x:x + 10] = 255
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tdsk.config import load_config
    from tdsk.demo import CLASSES
    from tdsk.models import build_model, save_pretrained

    base = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = build_model("demo", clip_pretrained=None).eval()
    for mod in model.modules():  # non-trivial BatchNorm statistics: eval-mode BN is not the identity
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    cfg = load_config("demo")
    cfg.pop("_meta", None)
    folder = save_pretrained(model, str(base / "model"), labels=CLASSES, recipe=cfg)
    rec = tdsk.Recognizer.from_pretrained(folder, precision="fp32", device="cpu")
    videos = [_write_video(base / f"clip{i}.mp4", seed=i) for i in range(3)]
    return {"base": base, "folder": folder, "rec": rec, "videos": videos}


@pytest.fixture
def make_client(env, tmp_path):
    """``make_client(**limits) -> (client, tmp folder)``; the clients are closed after the test."""
    made = []

    def make(**limits):
        tmp = tmp_path / f"uploads{len(made)}"
        client = TestClient(serve.build_app(env["rec"], serve.ServeConfig(**limits), tmp_root=str(tmp)))
        client.__enter__()
        made.append(client)
        return client, str(tmp)

    yield make
    for c in made:
        c.__exit__(None, None, None)


def _post(client, path, video, name=None, **params):
    with open(video, "rb") as f:
        return client.post(path, files={"file": (name or os.path.basename(video), f, "video/mp4")}, params=params)


def _same(answer, pred, name):
    assert answer["path"] == name and answer["views"] == pred.views
    assert [t["index"] for t in answer["top"]] == [t.index for t in pred.top]
    assert [t["label"] for t in answer["top"]] == [t.label for t in pred.top]
    assert [t["prob"] for t in answer["top"]] == pytest.approx([t.prob for t in pred.top], abs=TOL)


def _wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def _block_model_thread(client):
    """Occupy the model thread until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(30)
    client.app.state.serve.worker.call(hold)
    started.wait(10)
    return gate


# ----------------------------------------------------------------------------- answers

def test_predict_equals_recognizer_predict(env, make_client):
    client, tmp = make_client()
    rec, video = env["rec"], env["videos"][0]
    r = _post(client, "/predict", video, name="my clip.mp4")
    assert r.status_code == 200, r.text
    _same(r.json(), rec.predict(video), "my clip.mp4")
    # raw body, views and top_k as query parameters
    with open(video, "rb") as f:
        r = client.post("/predict", content=f.read(), params={"views": "3x2", "top_k": 3, "filename": "raw.mp4"},
                        headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    _same(r.json(), rec.predict(video, top_k=3, views=(3, 2)), "raw.mp4")
    # form fields work as options too
    with open(video, "rb") as f:
        r = client.post("/predict", files={"file": ("a.mp4", f)}, data={"top_k": "2"})
    assert len(r.json()["top"]) == 2
    assert os.listdir(tmp) == []


def test_frames_upload_equals_predict_on_the_frames(env, make_client):
    from PIL import Image

    from tdsk.data import read_video_frames

    client, tmp = make_client()
    rec, video = env["rec"], env["videos"][0]
    frames = read_video_frames(video, list(range(20)))
    files = []
    for i, f in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")  # lossless: the server sees these very pixels
        files.append(("frames", (f"f{i}.png", buf.getvalue(), "image/png")))
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    _same(r.json(), rec.predict(np.stack(frames)), "f0.png (+19 frames)")
    bad = files[:3] + [("frames", ("junk.png", b"not an image", "image/png"))]
    r = client.post("/predict", files=bad)
    assert r.status_code == 422 and "frame 3 is not a readable image" in r.json()["error"]
    assert tmp not in r.json()["error"]
    r = client.post("/timeline", files=files[:4])
    assert r.status_code == 422 and "needs a video file" in r.json()["error"]
    assert os.listdir(tmp) == []


def test_timeline_and_explain_are_the_library_results(env, make_client):
    from PIL import Image

    client, tmp = make_client()
    rec, video = env["rec"], env["videos"][1]
    r = _post(client, "/timeline", video, top_k=2, plot="1")
    assert r.status_code == 200, r.text
    got, want = r.json(), rec.timeline(video, top_k=2, plot=False).to_dict()
    assert got["source"] == "clip1.mp4" and got["duration"] == pytest.approx(want["duration"])
    assert [s["label"] for s in got["segments"]] == [s["label"] for s in want["segments"]]
    assert [[t["index"] for t in w["top"]] for w in got["windows"]] == \
        [[t["index"] for t in w["top"]] for w in want["windows"]]
    assert Image.open(io.BytesIO(base64.b64decode(got["png"].split(",", 1)[1]))).format == "PNG"
    r = _post(client, "/explain", video, target_class=3)
    assert r.status_code == 200, r.text
    ex = r.json()
    assert ex["index"] == 3 and ex["label"] == rec.label_of(3) and ex["path"] == "clip1.mp4"
    assert ex["predicted"] == rec.predict(video).index
    gif = Image.open(io.BytesIO(base64.b64decode(ex["gif"].split(",", 1)[1])))
    assert gif.format == "GIF" and gif.n_frames == rec.data_cfg.num_segments
    assert os.listdir(tmp) == []


def test_model_health_and_page(env, make_client):
    client, _ = make_client()
    info = client.get("/model").json()
    rec = env["rec"]
    assert info["classes"] == rec.classes and info["precision"] == "fp32" and info["device"] == "cpu"
    assert info["recipe"]["model"]["num_classes"] == 9 and "root" not in info["recipe"]["data"]
    assert info["batching"]["enabled"] is True
    assert env["folder"] not in json.dumps(info)  # no server path
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "<video" in page.text and "/timeline" in page.text
    r = client.get("/etc/passwd")
    assert r.status_code == 404 and "root:" not in r.text
    assert client.get("/predict").status_code == 405


def test_a_text_classifier_takes_other_class_names(env, make_client, monkeypatch):
    """DiST (model.classifier=text) scores a video against the text embeddings of the names a
    request gives; a fixed-head model refuses names. The names' embeddings come from
    ``text_embeddings_for`` (checked for its shape with the random-init tiny text tower), here
    replaced by rows of the model's own embeddings, so the answers can be checked exactly."""
    from tdsk.config import load_config
    from tdsk.demo import CLASSES
    from tdsk.models import build_model

    cfg = load_config("demo_dist")
    cfg.pop("_meta", None)
    cfg["model"]["clip_pretrained"] = None
    torch.manual_seed(0)
    model = build_model(cfg, class_names=CLASSES).eval()
    assert tuple(model.text_embeddings_for(["a cat", "a dog"]).shape) == (2, model.text_embeddings.shape[1])
    monkeypatch.setattr(type(model), "text_embeddings_for",
                        lambda self, names: self.text_embeddings[[CLASSES.index(n) for n in names]].clone())
    rec = tdsk.Recognizer(model, cfg, CLASSES, device="cpu", precision="fp32")
    tmp = str(env["base"] / "dist-uploads")
    video = env["videos"][1]
    with TestClient(serve.build_app(rec, tmp_root=tmp)) as client:
        assert client.get("/model").json()["text_classes"] is True
        r = _post(client, "/predict", video, classes=",".join(CLASSES))
        assert r.status_code == 200, r.text
        _same(r.json(), rec.predict(video), "clip1.mp4")
        with open(video, "rb") as f:
            r = client.post("/predict", files={"file": ("v.mp4", f)}, data={"classes": "right\nleft\n", "top_k": "2"})
        assert r.status_code == 200, r.text
        want = rec.logits(video)[:, [1, 0]].softmax(-1).mean(0)
        got = {t["label"]: t["prob"] for t in r.json()["top"]}
        assert got == pytest.approx({"right": float(want[0]), "left": float(want[1])}, abs=TOL)
        r = _post(client, "/predict", video, classes="up, up")
        assert r.status_code == 422 and "'up' is named twice" in r.json()["error"]
        assert os.listdir(tmp) == []
    client, _ = make_client()  # TDS-CLIP: a linear head, fixed classes
    assert client.get("/model").json()["text_classes"] is False
    r = _post(client, "/predict", video, classes="a cat, a dog")
    assert r.status_code == 422 and "fixed set of classes" in r.json()["error"]


# ----------------------------------------------------------------------------- bad input

def test_bad_uploads_are_4xx_with_the_reason_and_the_server_keeps_serving(env, make_client):
    client, tmp = make_client()
    video = env["videos"][0]
    with open(video, "rb") as f:
        data = f.read()
    cases = [
        (_post_bytes(client, b"this is not a video\n" * 20, "notes.mp4"), 422, "notes.mp4: could not read it as a video"),
        (_post_bytes(client, data[: len(data) // 3], "cut.mp4"), 422, "cut.mp4"),
        (_post_bytes(client, b"", "empty.mp4"), 400, "empty.mp4: the upload is empty"),
        (client.post("/predict", data={"top_k": "1"}, files={"other": ("a.mp4", data)}), 400, "form field 'file'"),
        (client.post("/predict", json={"path": "/etc/passwd"}), 415, "expected a video upload"),
        (client.post("/predict", content=b"junk--", headers={"content-type": "multipart/form-data; boundary=b"}),
         400, "upload: Invalid multipart data."),
        (_post(client, "/predict", video, views="2x1"), 422, "crops must be 1 or 3"),
        (_post(client, "/predict", video, top_k="many"), 422, "top_k 'many'"),
        (_post(client, "/explain", video, target_class=99), 422, "target_class 99"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, r.text
        message = r.json()["error"]
        assert words in message and tmp not in message and "/tmp" not in message and "Traceback" not in message
        ok = _post(client, "/predict", video)  # the server keeps serving
        assert ok.status_code == 200
    assert os.listdir(tmp) == []


def _post_bytes(client, data, name):
    return client.post("/predict", files={"file": (name, data, "video/mp4")})


def test_oversize_upload_is_413_by_length_and_while_streaming(env, make_client):
    client, tmp = make_client(max_upload_mb=2000 / 2 ** 20)  # 2000 bytes
    with open(env["videos"][0], "rb") as f:
        data = f.read()
    assert len(data) > 2000
    r = _post_bytes(client, data, "big.mp4")  # Content-Length says it all
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while reading
        for i in range(0, len(data), 500):
            yield data[i:i + 500]
    r = client.post("/predict", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert _post_bytes(client, b"x" * 100, "small.mp4").status_code == 422  # under the limit: read
    assert os.listdir(tmp) == []


def test_full_server_is_503_and_a_slow_request_is_504(env, make_client):
    client, tmp = make_client(queue=1, timeout=60)
    rec, video = env["rec"], env["videos"][2]
    state = client.app.state.serve
    gate = _block_model_thread(client)
    answers = {}
    t = threading.Thread(target=lambda: answers.setdefault("a", _post(client, "/predict", video)))
    t.start()
    _wait(lambda: state.admitted == 1 and state.worker._q.qsize() == 1)  # decoded, waiting for the model
    r = _post(client, "/predict", video)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
    gate.set()
    t.join(30)
    _same(answers["a"].json(), rec.predict(video), "clip2.mp4")

    client, tmp = make_client(timeout=0.5)
    state = client.app.state.serve
    gate = _block_model_thread(client)
    r = _post(client, "/timeline", video)
    assert r.status_code == 504 and "0.5 s" in r.json()["error"]
    r = _post(client, "/predict", video)
    assert r.status_code == 504
    gate.set()  # the jobs that gave up are skipped; their folders go
    _wait(lambda: state.admitted == 0 and os.listdir(tmp) == [])
    assert _post(client, "/predict", video).status_code == 200


def test_a_timeout_during_decoding_keeps_the_folder_and_the_place_until_the_decoder_is_done(env, tmp_path):
    import copy

    rec, video = env["rec"], env["videos"][0]
    slow = copy.copy(rec)
    gate = threading.Event()

    def prepare(*a, **k):
        gate.wait(30)
        return rec.prepare(*a, **k)
    slow.prepare = prepare
    tmp = tmp_path / "up"
    # 2 s: ample for the small upload to arrive, so the timeout falls while decoding
    with TestClient(serve.build_app(slow, serve.ServeConfig(timeout=2.0, queue=1), tmp_root=str(tmp))) as client:
        state = client.app.state.serve
        r = _post(client, "/predict", video)
        assert r.status_code == 504
        # the decoder still reads the upload: it stays, and so does the request's place
        assert state.admitted == 1 and len(os.listdir(tmp)) == 1
        assert _post(client, "/predict", video).status_code == 503
        gate.set()
        _wait(lambda: state.admitted == 0 and os.listdir(tmp) == [])
        assert state.worker.batches == 0  # the request that gave up never reached the model
        assert _post(client, "/predict", video).status_code == 200


# ----------------------------------------------------------------------------- batching and load

def test_requests_waiting_together_run_as_one_batch_of_their_own_answers(env, make_client):
    client, tmp = make_client(max_batch=8)
    rec, videos = env["rec"], env["videos"]
    state = client.app.state.serve
    gate = _block_model_thread(client)
    jobs = [(videos[i % 3], (1, 1) if i % 2 else (3, 1), 1 + i % 5) for i in range(6)]
    answers = [None] * len(jobs)

    def send(i):
        v, views, k = jobs[i]
        answers[i] = _post(client, "/predict", v, name=f"{i}.mp4", views=f"{views[0]}x{views[1]}", top_k=k)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    _wait(lambda: state.worker._q.qsize() == len(jobs))
    gate.set()
    for t in threads:
        t.join(30)
    assert state.worker.largest_batch == len(jobs)
    for i, (v, views, k) in enumerate(jobs):
        _same(answers[i].json(), rec.predict(v, top_k=k, views=views), f"{i}.mp4")
    assert os.listdir(tmp) == []


def test_model_worker_keeps_the_order_of_other_jobs_and_stops_on_close():
    """A batch stops at a non-predict job (which runs next, then the rest), a job that gave up is
    skipped, and close() ends the thread even when it arrives while a batch is being gathered."""
    order = []

    class Fake:
        precision = "fp32"

        def logits_many(self, clips):
            order.append(("batch", [int(c) for c in clips]))
            return [torch.tensor([[float(c)]]) for c in clips]

        def prediction(self, logits, top_k):
            return float(logits)

    w = serve.ModelWorker(Fake(), max_batch=8, batch_wait=0.5)
    gate = threading.Event()
    w.call(gate.wait)
    futs = [w.predict(torch.tensor(1), 1), w.predict(torch.tensor(2), 1)]
    gone = w.predict(torch.tensor(9), 1)
    gone.cancel()
    futs.append(w.call(lambda: order.append("call") or "called"))
    futs.append(w.predict(torch.tensor(3), 1))
    w.close(timeout=0)  # the sentinel arrives while the last batch waits for company
    gate.set()
    w._thread.join(10)
    assert not w._thread.is_alive()
    assert [f.result(1) for f in futs] == [1.0, 2.0, "called", 3.0] and gone.cancelled()
    assert order == [("batch", [1, 2]), "call", ("batch", [3])]
    # int8: one activation scale per forward pass would let requests in a batch change each other
    w8 = serve.ModelWorker(type("Int8", (), {"precision": "int8"})(), max_batch=8)
    assert not w8.batching and w8.max_batch == 1
    w8.close()


def test_load_over_loopback(env, tmp_path):
    """A real uvicorn server on 127.0.0.1 (a free port), 8 clients at once, 3 requests each."""
    import httpx
    import uvicorn

    rec, videos = env["rec"], env["videos"]
    want = {v: rec.predict(v) for v in videos}
    app = serve.build_app(rec, serve.ServeConfig(queue=32), tmp_root=str(tmp_path / "up"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    errors, done = [], []

    def client(c):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as h:
            for j in range(3):
                v = videos[(c + j) % 3]
                with open(v, "rb") as f:
                    r = h.post("/predict", files={"file": (f"c{c}-{j}.mp4", f)})
                try:
                    assert r.status_code == 200, r.text
                    _same(r.json(), want[v], f"c{c}-{j}.mp4")
                    done.append(1)
                except AssertionError as exc:
                    errors.append(exc)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        server.should_exit = True
        thread.join(30)
    assert not errors and len(done) == 24
    assert health["served"] == 24 and health["in_progress"] == 0
    assert not os.path.exists(tmp_path / "up") or os.listdir(tmp_path / "up") == []


# ----------------------------------------------------------------------------- the tool

def test_without_fastapi_one_line_says_how_to_install(env, monkeypatch, capsys):
    monkeypatch.setattr(serve, "serving_available", lambda: False)
    assert serve.main([env["folder"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tdsk[serve]'" in err[0]
    code = ("import sys, tdsk, tdsk.inference, tdsk.serve, tdsk.cli.serve; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_the_command_serves_on_loopback_and_removes_its_folder_on_sigterm(env, tmp_path):
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tdsk.serve", env["folder"], "--port", str(port),
                             "--precision", "fp32", "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < end, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        with open(env["videos"][0], "rb") as f:
            r = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("a.mp4", f)}, timeout=60)
        _same(r.json(), env["rec"].predict(env["videos"][0]), "a.mp4")
        assert [p.name.startswith("tdsk-serve-") for p in tmp.iterdir()] == [True]
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn shuts down (the app removes its folder), then re-raises SIGTERM: the process ends by it
    assert proc.returncode in (0, -signal.SIGTERM) and f"http://127.0.0.1:{port}/" in out
    assert "Traceback" not in out
    assert list(tmp.iterdir()) == []


def test_bad_arguments_are_one_line(env, tmp_path, capsys):
    assert serve.main([str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main([env["folder"], "--port", "70000"])
    assert "--port 70000" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no chromium on this machine (Debian: apt-get install chromium); the page's browser test "
                           "and its screenshot are not made here")
def test_page_in_a_headless_browser(env, tmp_path):
    """The page loads and its script fills in the model line (chromium --headless --dump-dom);
    a screenshot of it goes to the test's folder."""
    import uvicorn

    app = serve.build_app(env["rec"], tmp_root=str(tmp_path / "up"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    try:
        dom = subprocess.run([browser, *flags, "--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True,
                             text=True, timeout=60).stdout
        shot = tmp_path / "page.png"
        subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,700",
                        f"http://127.0.0.1:{port}/"], capture_output=True, timeout=60)
    finally:
        server.should_exit = True
        thread.join(30)
    assert "TDSCLIP, 9 classes, fp32 on cpu" in dom
    assert shot.exists() and shot.stat().st_size > 0
