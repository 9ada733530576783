"""The HTTP server against calling the library (``pytest bench/bench_serve.py --benchmark-only -s``).

``REQUESTS`` (default 16, ``TDSK_BENCH_SERVE_REQUESTS``) predictions of a small h264 clip (24
frames, 40x40, 12 fps) split over 1, 4 and 16 concurrent clients (threads):

* ``direct``: each client calls :meth:`tdsk.Recognizer.predict` on the file in this process
  (one shared recognizer; decoding included);
* ``server``: ``python -m tdsk.serve`` in its own process on 127.0.0.1 (a free port), each client
  uploading the file with httpx (``POST /predict``, multipart); the server batches the
  requests that wait together (docs/serving.md).

Model: the tiny demo TDS-CLIP (``demo`` recipe, random init, saved as a model folder), fp32 on
the CPU, both sides. ``TDSK_BENCH_SERVE_B16=1`` adds TDS-CLIP B/16 (``ssv1_b16``, random init,
224 px, one view; slow on a CPU: about 2 s a request on 2 cores). Each row's median is the wall
time of the whole set of requests (``TDSK_BENCH_ROUNDS`` rounds, default 3); the report gives
requests/s and the per-request latency (median and max over the last round). The load average
is recorded before and after. With ``--tdsk-summary PATH.json`` the table is also written to
``PATH-serve.md``. Nothing is asserted about timings; every answer is checked
against the direct prediction (same top-1).
"""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from benchlib import write_side_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUESTS = int(os.environ.get("TDSK_BENCH_SERVE_REQUESTS", "16"))
ROUNDS = int(os.environ.get("TDSK_BENCH_ROUNDS", "3"))
CLIENTS = (1, 4, 16)
MODELS = ["tiny"] + (["b16"] if os.environ.get("TDSK_BENCH_SERVE_B16") == "1" else [])
_RESULTS = {}

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=MODELS)
def served(request, tmp_path_factory):
    import tdsk
    from tdsk.config import load_config
    from tdsk.models import build_model, save_pretrained

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_timeline import write_video  # noqa: PLC0415  (the tests' small h264 writer)

    name = request.param
    base = tmp_path_factory.mktemp(f"serve-{name}")
    torch.manual_seed(0)
    recipe = "demo" if name == "tiny" else "ssv1_b16"
    cfg = load_config(recipe)
    cfg.pop("_meta", None)
    size = 40 if name == "tiny" else 256
    if name == "b16":
        cfg.setdefault("eval", {})["views"] = [1, 1]
    folder = save_pretrained(build_model(recipe, clip_pretrained=None).eval(), str(base / "model"), recipe=cfg)
    video = write_video(str(base / "clip.mp4"), 24, 12, size=size)
    rec = tdsk.Recognizer.from_pretrained(folder, precision="fp32", device="cpu")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tdsk.serve", folder, "--port", str(port), "--precision", "fp32",
                             "--device", "cpu", "--queue", str(4 * max(CLIENTS))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    _RESULTS.setdefault("load_before", os.getloadavg())
    yield {"name": name, "rec": rec, "video": video, "url": url, "want": rec.predict(video).index}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    _RESULTS["load_after"] = os.getloadavg()
    if name == MODELS[-1]:
        print("\n" + report())
        write_side_report(request, report() + "\n", "serve")


def _run_clients(clients: int, one) -> list:
    """``REQUESTS`` calls of ``one() -> top-1 index`` over ``clients`` threads; per-request (latency, index)."""
    per = [REQUESTS // clients + (1 if c < REQUESTS % clients else 0) for c in range(clients)]
    out, lock = [], threading.Lock()

    def client(n):
        for _ in range(n):
            start = time.perf_counter()
            index = one()
            with lock:
                out.append((time.perf_counter() - start, index))
    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("clients", CLIENTS)
@pytest.mark.parametrize("provider", ["direct", "server"])
def test_serve_throughput(record, benchmark, served, provider, clients):
    rec, video = served["rec"], served["video"]
    if provider == "direct":
        def one():
            return rec.predict(video).index
    else:
        local = threading.local()

        def one():
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=served["url"], timeout=600)
            with open(video, "rb") as f:
                r = local.client.post("/predict", files={"file": ("clip.mp4", f, "video/mp4")})
            r.raise_for_status()
            return r.json()["top"][0]["index"]
    last = {}

    def run():
        last["rows"] = _run_clients(clients, one)

    median = record(run, op="serve", case=f"{served['name']}_{REQUESTS}req_{clients}clients", mode="fp32",
                    provider=provider, rounds=ROUNDS, requests=REQUESTS, clients=clients)
    lat = sorted(r[0] for r in last["rows"])
    assert all(r[1] == served["want"] for r in last["rows"])  # every answer is the direct one
    row = {"median_s": median, "req_per_s": REQUESTS / median, "p50_ms": 1e3 * lat[len(lat) // 2],
           "max_ms": 1e3 * lat[-1]}
    benchmark.extra_info.update(row)
    _RESULTS.setdefault("rows", {})[(served["name"], provider, clients)] = row


def _load(avg) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in avg) + ")" if avg else "?"


def report() -> str:
    import platform

    rows = _RESULTS.get("rows", {})
    lines = [f"serve vs direct Recognizer.predict ({platform.machine()}, {os.cpu_count()} threads, torch "
             f"{torch.__version__}, {torch.get_num_threads()} torch threads; load average (1, 5, 15 min) "
             f"{_load(_RESULTS.get('load_before'))} before, {_load(_RESULTS.get('load_after'))} after; "
             f"{REQUESTS} requests per round, {ROUNDS} round(s), {time.strftime('%Y-%m-%d')})",
             "", "| model | clients | direct req/s | server req/s | server/direct | direct p50 ms | server p50 ms "
             "| server max ms |", "|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for c in CLIENTS:
            d, s = rows.get((name, "direct", c)), rows.get((name, "server", c))
            if not (d and s):
                continue
            lines.append(f"| {name} | {c} | {d['req_per_s']:.3g} | {s['req_per_s']:.3g} | "
                         f"{s['req_per_s'] / d['req_per_s']:.2f} | {d['p50_ms']:.0f} | {s['p50_ms']:.0f} | "
                         f"{s['max_ms']:.0f} |")
    return "\n".join(lines)
