"""Serve a trained model over HTTP: ``python -m tdsk.serve CHECKPOINT_OR_FOLDER`` (docs/serving.md).

A local web server (FastAPI on uvicorn; ``pip install 'tdsk[serve]'``) around one
:class:`tdsk.Recognizer`:

* ``POST /predict``: an uploaded video file -> the top-k classes and probabilities (the JSON of
  ``python -m tdsk.predict --json``); ``POST /timeline`` -> the timeline JSON
  (docs/timeline.md); ``POST /explain`` -> the explain pictures (GIF and PNG grid, base64);
  ``GET /health``; ``GET /model`` (recipe, classes, precision, device); ``GET /``: a web page.
* Uploads: a multipart form field ``file`` (``curl -F file=@clip.mp4``) or the raw bytes as the
  body (``curl --data-binary @clip.mp4 -H 'Content-Type: application/octet-stream'``), or the
  frames of one video as images in the repeated form field ``frames``; options (``top_k``,
  ``views`` as CROPSxCLIPS, ``stride`` seconds, ``target_class``, ``classes``: other class names
  for a text-classifier model) as query parameters or form fields.
* Requests that arrive together are batched: each upload is decoded on one of ``--decode-workers`` threads, and one
  model thread runs the decoded clips of all waiting ``/predict`` requests in one forward pass
  (:meth:`tdsk.Recognizer.logits_many`), then splits the result back per request. At most
  ``--queue`` requests are admitted at a time (a 503 beyond, before the upload is read), uploads
  are limited to ``--max-upload-mb`` (413) and each request to ``--timeout`` seconds (504).
* Safe by default: binds to 127.0.0.1; each upload goes to its own folder under one temporary
  folder of the server and is deleted as soon as the request is done with it; no
  request names a server path (inputs are uploads only) and answers name the upload by its
  client-side file name, never by where it was stored.

The tool is apart from the library (the library never imports it); FastAPI and uvicorn are
imported only when an app is built.
"""
import argparse
import asyncio
import base64
import concurrent.futures as cf
import dataclasses
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence

__all__ = ["main", "build_app", "ServeConfig", "ModelWorker", "serving_available", "MISSING_DEPS"]

MISSING_DEPS = "python -m tdsk.serve needs FastAPI and uvicorn: pip install 'tdsk[serve]' " \
               "(or pip install fastapi uvicorn python-multipart)"
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
MAX_FRAMES = 2000  # images per frames upload
MAX_CLIPS = 10  # views=CxN: N temporal clips at most (each view is a [T, M, 3, S, S] float tensor in memory)
log = logging.getLogger("tdsk.serve")


@dataclasses.dataclass
class ServeConfig:
    """The server's limits (the command-line flags of the same names)."""

    max_upload_mb: float = 200.0  #: larger uploads get a 413 (checked on Content-Length and while reading)
    queue: int = 16               #: requests admitted at a time (uploading, decoding, waiting or running)
    max_batch: int = 8            #: /predict requests per forward pass
    batch_wait_ms: float = 5.0    #: how long the model thread waits for more requests to join a batch
    timeout: float = 120.0        #: seconds one request may take (504 after)
    decode_workers: int = 2       #: threads decoding uploads
    top_k: int = 5                #: default top-k

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ClientError(Exception):
    """A request the client can fix: ``status`` (4xx) and a one-sentence ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- the model thread

class ModelWorker:
    """One thread owns the model; jobs reach it through a queue.

    :meth:`predict` jobs that are waiting together run as one batch (at most ``max_batch``, the
    first waits up to ``batch_wait`` seconds for company); :meth:`call` jobs (timeline, explain)
    run alone. Each job's answer goes to its own :class:`concurrent.futures.Future`, so answers
    cannot cross. A job cancelled before it started is skipped. ``int8`` recognizers are never
    batched: their activation scale is computed per forward pass, which would let one request's
    input change another's answer.
    """

    def __init__(self, rec, max_batch: int = 8, batch_wait: float = 0.005):
        self.rec = rec
        self.batching = getattr(rec, "precision", None) != "int8"
        self.max_batch = max(1, int(max_batch)) if self.batching else 1
        self.batch_wait = max(0.0, float(batch_wait))
        self.batches = 0           # forward passes of /predict batches run
        self.largest_batch = 0
        self._q: "queue.Queue" = queue.Queue()  # bounded by the server's admission count
        self._thread = threading.Thread(target=self._run, name="tdsk-serve-model", daemon=True)
        self._thread.start()

    def predict(self, clip, top_k: int) -> cf.Future:
        """``clip``: prepared views ``[V, T, M, 3, S, S]``; the future's result is a :class:`tdsk.inference.Prediction`."""
        fut: cf.Future = cf.Future()
        self._q.put(("predict", (clip, int(top_k)), fut))
        return fut

    def call(self, fn: Callable[[], Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        self._q.put(("call", fn, fut))
        return fut

    def close(self, timeout: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        nothing = object()
        carry = nothing  # a job taken from the queue while gathering a batch that is not part of it
        while True:
            item = carry if carry is not nothing else self._q.get()
            carry = nothing
            if item is None:  # close()
                return
            kind, payload, fut = item
            if kind == "call":
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(payload())
                    except BaseException as exc:  # noqa: BLE001  (handed to the request, which answers it)
                        fut.set_exception(exc)
                continue
            batch = [item]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None or nxt[0] != "predict":
                    carry = nxt
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch) -> None:
        batch = [b for b in batch if b[2].set_running_or_notify_cancel()]  # skip requests that gave up
        if not batch:
            return
        try:
            logits = self.rec.logits_many([b[1][0] for b in batch])
        except BaseException as exc:  # noqa: BLE001
            for b in batch:
                b[2].set_exception(exc)
            return
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        for (_, (_, top_k), fut), lg in zip(batch, logits):
            try:
                fut.set_result(self.rec.prediction(lg, top_k))
            except BaseException as exc:  # noqa: BLE001  (NonFiniteOutputError: this request only)
                fut.set_exception(exc)


# ----------------------------------------------------------------------------- helpers

def _parse_views(text: Optional[str]):
    if text in (None, ""):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m:
        raise ClientError(422, f"views {text!r}: expected CROPSxCLIPS, e.g. 1x1 or 3x2")
    crops, clips = int(m.group(1)), int(m.group(2))
    if crops not in (1, 3) or not 1 <= clips <= MAX_CLIPS:
        raise ClientError(422, f"views {text!r}: crops must be 1 or 3 and clips 1 to {MAX_CLIPS}")
    return crops, clips


def _parse_int(name: str, text, default, lo: int, hi: int):
    if text in (None, ""):
        return default
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ClientError(422, f"{name} {text!r}: expected a whole number") from None
    if not lo <= value <= hi:
        raise ClientError(422, f"{name} {value}: expected {lo} to {hi}")
    return value


def _parse_seconds(name: str, text):
    if text in (None, ""):
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ClientError(422, f"{name} {text!r}: expected a number of seconds") from None
    if not 0 < value <= 3600:
        raise ClientError(422, f"{name} {value:g}: expected more than 0 and at most 3600 seconds")
    return value


MAX_CLASS_NAMES = 1000


def _parse_class_names(text):
    """``classes`` (one name a line, or comma-separated on one line) -> names, or None when not given."""
    if text is None or not str(text).strip():
        return None
    text = str(text)
    names = [n.strip() for n in (text.splitlines() if "\n" in text else text.split(","))]
    names = [n for n in names if n]
    if not 1 <= len(names) <= MAX_CLASS_NAMES:
        raise ClientError(422, f"classes: give 1 to {MAX_CLASS_NAMES} class names, got {len(names)}")
    long = [n for n in names if len(n) > 200]
    if long:
        raise ClientError(422, f"classes: a class name is at most 200 characters ({long[0][:40]!r}...)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ClientError(422, f"classes: {twice[0]!r} is named twice")
    return names


def _text_classifier(model) -> bool:
    """Whether ``model`` scores videos against class-name text embeddings (so takes new names)."""
    if getattr(model, "open_vocabulary", False):  # the text-classifier contract says so itself
        return hasattr(model, "text_embeddings_for")
    return hasattr(model, "text_embeddings_for") and getattr(model, "head", None) is None \
        and getattr(model, "text_embeddings", None) is not None


def _upload_suffix(name: str) -> str:
    """A safe suffix for the stored upload (the decoder may look at it); never a client path."""
    ext = os.path.splitext(os.path.basename(name.replace("\\", "/")))[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".video"


def _display_name(name: Optional[str]) -> str:
    """The client's file name, its last component only, printable, at most 120 characters."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable())
    return base[:120] or "upload"


async def _copy(upload, path: str) -> None:
    with open(path, "wb") as out:
        while True:
            chunk = await upload.read(1 << 20)
            if not chunk:
                return
            out.write(chunk)


def _video_input(path: str):
    """What :meth:`tdsk.Recognizer.prepare` takes for an upload: the video file itself, or for a
    folder of uploaded frames their pixels, ``uint8 [N, H, W, 3]`` in upload order."""
    if not os.path.isdir(path):
        return path
    import numpy as np
    from PIL import Image

    frames = []
    for n in sorted(os.listdir(path)):
        try:
            with Image.open(os.path.join(path, n)) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except OSError as exc:  # PIL.UnidentifiedImageError, a truncated image
            raise ValueError(f"frame {int(os.path.splitext(n)[0])} is not a readable image ({exc})") from None
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"the frames differ in size ({sorted({f.shape[:2] for f in frames})[:3]} ...): "
                         "send frames of one video")
    return np.stack(frames)


def _data_url(path: str, mime: str) -> str:
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode("ascii")


def _model_info(rec, cfg: ServeConfig, worker: ModelWorker) -> dict:
    from tdsk._io import plain

    recipe = {k: v for k, v in rec.cfg.items() if not k.startswith("_")}
    data = dict(recipe.get("data") or {})
    for key in ("root", "train_list", "val_list", "test_list"):  # server paths: not the client's business
        data.pop(key, None)
    recipe["data"] = data
    return plain({
        "model": type(rec.model).__name__,
        "num_classes": rec.num_classes,
        "classes": [rec.label_of(i) for i in range(rec.num_classes)],
        "views": list(rec.views),
        "precision": rec.precision,
        "precision_reason": rec.precision_reason,
        "device": str(rec.device),
        "text_classes": _text_classifier(rec.runtime_model),
        "recipe": recipe,
        "batching": {"enabled": worker.batching, "max_batch": worker.max_batch,
                     "why_not": None if worker.batching else "int8 activation scales are per forward pass"},
        "limits": {"max_upload_mb": cfg.max_upload_mb, "queue": cfg.queue, "timeout_s": cfg.timeout,
                   "max_clips": MAX_CLIPS},
    }, finite_only=True)


# ----------------------------------------------------------------------------- the app

def build_app(rec, config: Optional[ServeConfig] = None, tmp_root: Optional[str] = None,
              remove_tmp: Optional[bool] = None):
    """The ASGI app (FastAPI) serving ``rec`` (a :class:`tdsk.Recognizer`).

    ``tmp_root``: the folder uploads go to (one sub-folder per request, removed when the request
    is done with it); default a new ``tdsk-serve-*`` folder under the system temporary folder.
    ``remove_tmp``: remove ``tmp_root`` when the app shuts down (default: when the app made it).
    ``app.state.serve`` holds the worker, limits and counters.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    from tdsk.data import DecodeError
    from tdsk.inference import NonFiniteOutputError

    cfg = config or ServeConfig()
    own_tmp = tmp_root is None if remove_tmp is None else bool(remove_tmp)
    tmp_root = os.path.abspath(tmp_root or tempfile.mkdtemp(prefix="tdsk-serve-"))
    os.makedirs(tmp_root, exist_ok=True)
    worker = ModelWorker(rec, cfg.max_batch, cfg.batch_wait_ms / 1000.0)
    decoders = cf.ThreadPoolExecutor(max(1, int(cfg.decode_workers)), thread_name_prefix="tdsk-serve-decode")
    state = dataclasses.make_dataclass("ServeState", ["worker", "config", "tmp_root", "admitted", "served",
                                                      "rejected"])(worker, cfg, tmp_root, 0, 0, 0)
    lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()
        decoders.shutdown(wait=True, cancel_futures=True)
        if own_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)

    app = FastAPI(title="tdsk", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.add_middleware(_BodyLimit, limit=cfg.max_upload_bytes)

    def error(status: int, message: str, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ClientError)
    async def _client_error(request, exc: ClientError):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        if exc.status_code == 404:
            return error(404, f"no such page: {request.method} {request.url.path} (see GET /, /health, /model; "
                              "POST /predict, /timeline, /explain)")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}")
        return error(exc.status_code, str(exc.detail))

    # -- admission: at most cfg.queue requests hold resources at a time -------------------------
    def admit() -> bool:
        with lock:
            if state.admitted >= cfg.queue:
                state.rejected += 1
                return False
            state.admitted += 1
            return True

    def release(*_):
        with lock:
            state.admitted -= 1

    async def receive_upload(request: Request, folder: str):
        """Stream the upload into ``folder``; returns ``(path, client name, options)``."""
        ctype = request.headers.get("content-type", "")
        options = dict(request.query_params)
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_FRAMES, max_fields=16)
            try:
                video, frames = None, []
                for key, value in form.multi_items():
                    if not hasattr(value, "read"):
                        options.setdefault(key, value)
                    elif key == "file" and video is None:
                        video = value
                    elif key == "frames":
                        frames.append(value)
                    else:
                        raise ClientError(400, f"upload one video in the form field 'file' (or images in 'frames'), "
                                               f"not {'a second file' if key == 'file' else repr(key)}")
                if video is not None and frames:
                    raise ClientError(400, "send a video ('file') or its frames ('frames'), not both")
                if video is None and not frames:
                    raise ClientError(400, "no video uploaded: send it in the form field 'file' (or images in 'frames')")
                if video is not None:
                    name = _display_name(video.filename)
                    path = os.path.join(folder, "upload" + _upload_suffix(video.filename or ""))
                    await _copy(video, path)
                else:  # frames in upload order, as a frame folder of this request
                    name = f"{_display_name(frames[0].filename)} (+{len(frames) - 1} frames)"
                    path = os.path.join(folder, "frames")
                    os.makedirs(path)
                    for i, f in enumerate(frames):
                        frame_path = os.path.join(path, f"{i:05d}" + _upload_suffix(f.filename or ""))
                        await _copy(f, frame_path)
                        if os.path.getsize(frame_path) == 0:
                            raise ClientError(400, f"frame {i} ({_display_name(f.filename)}) is empty")
                    return path, name, options
            finally:
                await form.close()
        else:
            if ctype.startswith(("application/json", "text/", "application/x-www-form-urlencoded")):
                raise ClientError(415, f"expected a video upload (multipart form field 'file' or the raw bytes), "
                                       f"got Content-Type {ctype.split(';')[0]}")
            name = _display_name(options.get("filename"))
            path = os.path.join(folder, "upload" + _upload_suffix(options.get("filename") or ""))
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
        if os.path.getsize(path) == 0:
            raise ClientError(400, f"{name}: the upload is empty")
        return path, name, options

    def sanitize(text: str, path: str, name: str) -> str:
        """An error message with the stored upload's path replaced by its name, and no server folder."""
        text = str(text)
        if path:  # (replacing "" would put the name between every two characters)
            folder = os.path.dirname(path)
            text = text.replace(path, name).replace(folder + os.sep, "").replace(folder, "")
        return text.replace(tmp_root + os.sep, "").replace(tmp_root, "")

    async def handle(request: Request, run: Callable):
        """Admission, upload, ``run(path, name, options, folder) -> (future, finish, cancel)``,
        timeout, cleanup. The future is done only when nothing uses the upload folder any more."""
        if not admit():
            return error(503, f"the server is busy ({cfg.queue} requests in progress); try again shortly",
                         headers={"Retry-After": "1"})
        folder = os.path.join(tmp_root, uuid.uuid4().hex)
        os.makedirs(folder)
        job: dict = {"fut": None, "cancel": None, "path": "", "name": "upload"}

        async def work():
            path, name, options = await receive_upload(request, folder)
            job.update(path=path, name=name)
            job["fut"], finish, job["cancel"] = run(path, name, options, folder)
            # shield: a timeout must not cancel the job's future itself (asyncio would, through
            # wrap_future), which would mark it done, free its folder and its admission while a
            # decode or forward pass still uses them; job["cancel"] stops what has not started
            return finish(await asyncio.shield(asyncio.wrap_future(job["fut"])))

        name = "upload"
        try:
            try:
                return JSONResponse(await asyncio.wait_for(work(), cfg.timeout))
            finally:
                name = job["name"]
        except (asyncio.TimeoutError, TimeoutError):
            if job["cancel"] is not None:
                job["cancel"]()
            return error(504, f"{name}: no answer within {cfg.timeout:g} s (the server's --timeout); "
                              "try a shorter video or fewer views")
        except ClientError as exc:
            return error(exc.status, sanitize(exc.message, job["path"], name))
        except DecodeError as exc:
            return error(422, f"{name}: could not read it as a video ({sanitize(exc.reason, job['path'], name)})")
        except NonFiniteOutputError as exc:
            return error(500, f"{name}: {exc}")
        except (ValueError, OSError) as exc:  # a video too short for the sampling, a file PyAV cannot open, ...
            return error(422, f"{name}: could not use it ({sanitize(str(exc), job['path'], name)})")
        except StarletteHTTPException as exc:  # the form parser's 400s (a malformed or too many-part form)
            return error(exc.status_code, f"{name}: {exc.detail}")
        except ClientDisconnect:
            return error(400, f"{name}: the client went away before the upload was complete")
        except _BodyLimit.TooLarge:
            raise
        except Exception as exc:  # noqa: BLE001  (the server keeps serving; the log has the traceback)
            log.exception(f"serve: {request.url.path} failed on {name}")
            return error(500, f"{name}: the server failed ({type(exc).__name__}: "
                              f"{sanitize(str(exc), job['path'], name)})")
        finally:
            def done(*_):
                shutil.rmtree(folder, ignore_errors=True)
                release()
                with lock:
                    state.served += 1
            if job["fut"] is None:
                done()
            else:
                job["fut"].add_done_callback(done)  # the folder goes when nothing uses it any more

    # -- endpoints -------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return HTMLResponse(f.read())

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_progress": state.admitted, "queue": cfg.queue, "served": state.served,
                "rejected": state.rejected, "batches": worker.batches, "largest_batch": worker.largest_batch}

    @app.get("/model")
    async def model_info():
        return _model_info(rec, cfg, worker)

    @app.post("/predict")
    async def predict(request: Request):
        def run(path, name, options, folder):
            views = _parse_views(options.get("views"))
            names = _parse_class_names(options.get("classes"))
            if names is not None:
                return open_vocabulary(path, name, options, names, views)
            top_k = _parse_int("top_k", options.get("top_k"), cfg.top_k, 1, max(1, rec.num_classes or 1000))
            out: cf.Future = cf.Future()
            model_fut: list = []
            gave_up = threading.Event()

            def decoded(f: cf.Future):
                shutil.rmtree(folder, ignore_errors=True)  # decoded: the upload is not needed any more
                if f.cancelled() or gave_up.is_set():
                    out.cancel()
                elif f.exception() is not None:
                    out.set_exception(f.exception())
                else:
                    m = worker.predict(f.result(), top_k)
                    model_fut.append(m)
                    m.add_done_callback(lambda m: _chain(m, out))

            def cancel():
                gave_up.set()
                dec.cancel()
                for m in model_fut:
                    m.cancel()

            dec = decoders.submit(lambda: rec.prepare(_video_input(path), views))
            dec.add_done_callback(decoded)

            def finish(pred):
                d = pred.to_dict()
                d["path"] = name
                return d
            return out, finish, cancel
        return await handle(request, run)

    text_cache: "OrderedDict[tuple, Any]" = OrderedDict()  # class names -> text embeddings (model thread only)

    def open_vocabulary(path, name, options, names, views):
        """``/predict`` with the client's class names (a text-classifier model): the names' text
        embeddings (cached), the video's embedding per view, their scaled cosines -> a Prediction
        whose labels are the names. Runs on the model thread, decoding included."""
        model = rec.runtime_model
        if not _text_classifier(model):
            raise ClientError(422, f"this model ({type(rec.model).__name__}) has a fixed set of classes; other class "
                                   "names need a text-classifier model (e.g. DiST with model.classifier=text)")
        top_k = _parse_int("top_k", options.get("top_k"), cfg.top_k, 1, len(names))

        def job():
            import copy

            import torch

            key = tuple(names)
            if key not in text_cache:
                text_cache[key] = rec.model.text_embeddings_for(names)
                while len(text_cache) > 16:
                    text_cache.popitem(last=False)
            text_cache.move_to_end(key)
            clip = rec.prepare(_video_input(path), views)
            with torch.no_grad(), rec.autocast():
                logits = model.classify(model.features(clip), text_cache[key])
            named = copy.copy(rec)  # the same model, these names for this answer only
            named.classes = list(names)
            return named.prediction(logits.float().cpu(), top_k)

        fut = worker.call(job)

        def finish(pred):
            d = pred.to_dict()
            d["path"] = name
            return d
        return fut, finish, fut.cancel

    @app.post("/timeline")
    async def timeline(request: Request):
        def run(path, name, options, folder):
            top_k = _parse_int("top_k", options.get("top_k"), cfg.top_k, 1, max(1, rec.num_classes or 1000))
            stride = _parse_seconds("stride", options.get("stride"))
            plot = str(options.get("plot", "")).lower() in ("1", "true", "yes")
            if os.path.isdir(path):
                raise ClientError(422, "the timeline needs a video file (form field 'file'), not frames")

            def job():
                res = rec.timeline(path, top_k=top_k, stride_seconds=stride, plot=plot)
                d = res.to_dict()
                d["source"] = name
                if plot:
                    from tdsk.report import plot_timeline

                    png = os.path.join(folder, "timeline.png")
                    plot_timeline(res, png)
                    d["png"] = _data_url(png, "image/png")
                return d
            fut = worker.call(job)
            return fut, _json_safe, fut.cancel
        return await handle(request, run)

    @app.post("/explain")
    async def explain(request: Request):
        def run(path, name, options, folder):
            n = max(1, rec.num_classes or 1)
            target = _parse_int("target_class", options.get("target_class"), None, 0, n - 1)

            def job():
                out = os.path.join(folder, "explain")
                ex = rec.explain(_video_input(path), out, target, stem="explain")
                return {"path": name, "index": ex.index, "label": ex.label, "prob": ex.prob,
                        "predicted": ex.predicted, "predicted_label": rec.label_of(ex.predicted),
                        "gif": _data_url(ex.gif_path, "image/gif"), "grid": _data_url(ex.grid_path, "image/png")}
            fut = worker.call(job)
            return fut, _json_safe, fut.cancel
        return await handle(request, run)

    return app


def _chain(src: cf.Future, dst: cf.Future) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def _json_safe(d):
    from tdsk._io import plain

    return plain(d, finite_only=True)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413, by its Content-Length
    before anything is read, else as soon as the bytes read pass the limit."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = int(limit)

    async def _reply(self, send) -> None:
        import json

        body = json.dumps({"error": f"the upload is larger than the server's limit "
                                    f"({self.limit / 1048576:g} MB, --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                return await self._reply(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyLimit.TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyLimit.TooLarge:
            if not started:
                await self._reply(send)


# ----------------------------------------------------------------------------- the command line

def serving_available() -> bool:
    """FastAPI, uvicorn and python-multipart (FastAPI's form parser; ``python_multipart`` since
    0.0.13, ``multipart`` before) are installed."""
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("fastapi", "uvicorn")) and (
        find_spec("python_multipart") is not None or find_spec("multipart") is not None)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    from tdsk.cli._common import _positive_int
    from tdsk.cli.predict import is_override

    p = argparse.ArgumentParser(prog="python -m tdsk.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_FOLDER",
                   help="tdsk checkpoint (best.pt), official TDS-CLIP file (with --cfg), or model folder")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    p.add_argument("--cfg", help="recipe (default: the one stored in the checkpoint / model folder)")
    p.add_argument("--labels", help="class names, one per line (index order)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="as for python -m tdsk.predict (docs/inference.md)")
    p.add_argument("--views", help="default CROPSxCLIPS (default: the recipe's test views)")
    p.add_argument("--max-upload-mb", type=float, default=ServeConfig.max_upload_mb,
                   help="largest upload accepted, MB (413 beyond; default %(default)g)")
    p.add_argument("--queue", type=_positive_int, default=ServeConfig.queue,
                   help="requests admitted at a time (503 beyond; default %(default)s)")
    p.add_argument("--max-batch", type=_positive_int, default=ServeConfig.max_batch,
                   help="/predict requests run in one forward pass (default %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=ServeConfig.batch_wait_ms,
                   help="how long a batch waits for more requests to join (default %(default)g ms)")
    p.add_argument("--timeout", type=float, default=ServeConfig.timeout,
                   help="seconds per request (504 after; default %(default)g)")
    p.add_argument("--decode-workers", type=_positive_int, default=ServeConfig.decode_workers,
                   help="threads decoding uploads (default %(default)s)")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if not is_override(o)]
    if bad:
        p.error(f"{bad[0]!r} is not a section.key=value recipe override")
    if not 0 < args.max_upload_mb <= 1e6 or not 0 < args.timeout <= 86400 or not 0 <= args.batch_wait_ms <= 1000:
        p.error("--max-upload-mb must be > 0, --timeout > 0 (at most 86400) and --batch-wait-ms 0 to 1000")
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port}: expected 1 to 65535")
    if not serving_available():
        print(f"error: {MISSING_DEPS}", file=sys.stderr)
        return 2
    import uvicorn
    from tdsk.cli import _common as common
    from tdsk.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_folder

    if os.path.isdir(args.checkpoint) and not is_model_folder(args.checkpoint):
        print(f"error: {args.checkpoint}: is a directory, expected a checkpoint file or a model folder "
              f"({CONFIG_NAME} + {WEIGHTS_NAME})", file=sys.stderr)
        return 2
    if not os.path.exists(args.checkpoint):
        print(f"error: {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    from tdsk.inference import Recognizer

    try:
        views = common.parse_views(args.views)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    try:
        rec = Recognizer.from_pretrained(args.checkpoint, device=args.device, precision=args.precision, cfg=args.cfg,
                                         overrides=args.overrides, labels=args.labels, views=views)
    except common.user_errors(loading=True) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = ServeConfig(max_upload_mb=args.max_upload_mb, queue=args.queue, max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, timeout=args.timeout, decode_workers=args.decode_workers)
    tmp_root = tempfile.mkdtemp(prefix="tdsk-serve-")
    # removed by the app's shutdown, which uvicorn runs on Ctrl-C and SIGTERM before it re-raises
    # the signal (so the process ends by it), and below when uvicorn returns
    app = build_app(rec, cfg, tmp_root=tmp_root, remove_tmp=True)
    if not _is_loopback(args.host):
        log.warning(f"serve: listening on {args.host}: other machines can reach this server (no authentication)")
    print(f"tdsk.serve: {rec!r} on http://{'[%s]' % args.host if ':' in args.host else args.host}:{args.port}/ "
          "(Ctrl-C stops)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})", file=sys.stderr)
        return 1
    except SystemExit as exc:  # uvicorn exits 3 when it cannot bind (the port is taken, no permission)
        if exc.code:
            print(f"error: the server could not start on {args.host}:{args.port} (the line above says why)",
                  file=sys.stderr)
            return 1
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down, then re-raised SIGINT
        print("tdsk.serve: stopped (Ctrl-C)", file=sys.stderr)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
