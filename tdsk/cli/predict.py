"""Classify video files: ``python -m tdsk.predict VIDEO [VIDEO ...] --checkpoint CKPT``.

Prints the top-5 classes with their probabilities for each file (``--json`` for one
JSON object per file). Videos are read with the recipe's test protocol (views =
crops x clips, softmax averaged); a JPEG frame folder works too. Class names come
from ``--labels FILE`` (one per line), else from the checkpoint, else indices.
``--classes FILE`` (open vocabulary, docs/protocols.md) scores other classes than the
model was trained on: a model with a text classifier switches to them, no retraining.
``--checkpoint`` takes tdsk checkpoints, official TDS-CLIP ones (with ``--cfg``) and
model folders (``tdsk.models.save_pretrained``); the model runs through
:class:`tdsk.inference.Recognizer` (``--precision auto``, the default, is bf16 autocast
where the hardware has fast bf16 and fp32 elsewhere, logged; ``--compile``: torch.compile).

An argument is a config override only if it reads ``section.key=value`` with a recipe
section (``model``, ``data``, ``solver``, ``train``, ``eval``, ``output``); anything else
is a video path (``a=b.mp4`` is a video). Missing inputs are reported before the model
is loaded; each missing, undecodable or non-finite-scoring video gets its own error
line and the others still run. Exit code: 0 if every video was classified, 1 if any
failed, 2 for a usage error (bad checkpoint, recipe, override, labels file).

Long videos (docs/timeline.md): ``--timeline`` slides the model's window over each whole
video (``--stride SECONDS`` or ``--stride-segments N``; JSON, CSV and a PNG in ``--out``),
A folder of video files predicts each video in it (a folder of JPEG frames is one video).
``--explain DIR`` draws what the model saw, and ``--stream SOURCE`` (an ``rtsp://`` or
``http://`` URL, a camera ``/dev/video0`` or its index ``0``, or a file) prints a prediction
every stride as the frames arrive, until the source ends, ``--duration`` seconds of it have
passed, or Ctrl-C (exit 0; 1 if the source cannot be opened or read).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from typing import Callable, Sequence

__all__ = ["main", "predict", "is_override", "SECTIONS"]

SECTIONS = ("model", "data", "solver", "train", "eval", "output")
_OVERRIDE = re.compile(r"^\+?(?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)+=" % "|".join(SECTIONS))


def is_override(arg: str) -> bool:
    """``section.key=value`` (optionally ``+section.key=value``) with a recipe section."""
    return bool(_OVERRIDE.match(arg))


def predict(model, cfg: dict, paths: Sequence[str], *, views=None, top: int = 5, device=None,
            classes: Sequence[str] | None = None, precision: str | None = None,
            on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Top-``top`` predictions per file: ``[{"path", "views", "top": [{"index", "label", "prob"}]} | {"path", "error"}]``.

    ``model``: a :class:`tdsk.inference.Recognizer` (its device, precision and classes are
    used), or a model (wrapped in one with ``cfg``, ``classes``, ``device`` and
    ``precision``, default fp32). A video any of whose views has non-finite logits, or
    whose averaged probabilities are non-finite, is an error (``"non-finite model output
    ..."``), never a top-k list. ``on_result`` is called with each result as soon as it is known.
    """
    from tdsk.data import DecodeError
    from tdsk.inference import NonFiniteOutputError, Recognizer

    if int(top) < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if isinstance(model, Recognizer):
        rec = model
        if classes is not None:  # other names for this call only: a shallow copy, the caller's is unchanged
            rec = copy.copy(model)
            rec.classes = list(classes)
    else:
        rec = Recognizer(model, cfg, classes, device=device, precision=precision or "fp32", switch_classes=False)
    out = []
    for path in paths:
        try:
            result = rec.predict(path, top_k=int(top), views=views).to_dict()
        except (DecodeError, FileNotFoundError, OSError) as exc:
            result = {"path": path, "error": str(exc)}
        except NonFiniteOutputError as exc:
            result = {"path": path, "views": exc.views, "error": str(exc)}
        out.append(result)
        if on_result is not None:
            on_result(result)
    return out




def _printer(as_json: bool) -> Callable[[dict], None]:
    def emit(r: dict) -> None:
        if as_json:
            print(json.dumps(r), flush=True)
        elif "error" in r:
            print(f"{r['path']}: error: {r['error']}", flush=True)
        else:
            lines = [f"{r['path']}  ({r['views']} views)"]
            lines += [f"  {rank}. {t['label']:<40s} {100 * t['prob']:6.2f}%  (class {t['index']})"
                      for rank, t in enumerate(r["top"], 1)]
            print("\n".join(lines), flush=True)
    return emit


def main(argv: Sequence[str] | None = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    from tdsk.cli._common import _positive_int, parse_views

    p = argparse.ArgumentParser(prog="python -m tdsk.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="*", metavar="VIDEO",
                   help="video files (or JPEG frame folders); section.key=value items (section: "
                        + ", ".join(SECTIONS) + ") are config overrides")
    p.add_argument("--checkpoint", required=True,
                   help="tdsk checkpoint (best.pt, epoch_*.pt), official TDS-CLIP file (with --cfg), or model folder")
    p.add_argument("--cfg", help="recipe (default: the one stored in a tdsk checkpoint / model folder; "
                                 "needed for official ones)")
    p.add_argument("--labels", help="class names, one per line (index order)")
    p.add_argument("--classes", metavar="FILE",
                   help="open vocabulary: score these classes instead of the model's own (any class-name file; "
                        "a model with a text classifier only, docs/protocols.md)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the recipe's test views)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes shown per video (>= 1, default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per video on stdout")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda[:N]")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto: bf16 autocast where the hardware has fast bf16 (AMX / AVX512-BF16 CPUs, "
                        "bf16 GPUs), fp16 on other GPUs, int8 linear layers on other CPUs (logged); "
                        "docs/inference.md")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    p.add_argument("--timeline", action="store_true",
                   help="long videos: slide the window over the whole video (per-window top-k as JSON/CSV, "
                        "merged segments, a timeline PNG in --out); docs/timeline.md")
    p.add_argument("--stride", type=_positive_float, metavar="SECONDS",
                   help="--timeline/--stream: a window every SECONDS, rounded to whole segments (default: one "
                        "segment, about clip-seconds / 8)")
    p.add_argument("--stride-segments", type=_positive_int, metavar="N",
                   help="--timeline/--stream: a window every N segments (instead of --stride)")
    p.add_argument("--clip-seconds", type=_positive_float, default=None,
                   help="--timeline/--stream: seconds one window covers (default: the recipe's eval.clip_seconds, "
                        "4 for the shipped dataset recipes, 1.33 for the demo)")
    p.add_argument("--stream", metavar="SOURCE",
                   help="live: rtsp:// or http:// URL, camera /dev/video0 (or its index 0), or a file; prints a "
                        "prediction every stride as frames arrive (Ctrl-C stops)")
    p.add_argument("--fps", type=_fps_float, help="--stream: the source's frame rate (default: the stream's)")
    p.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                   help="--stream: stop after this many seconds of the source")
    p.add_argument("--stream-format", help="--stream: PyAV/ffmpeg input format (e.g. v4l2, mjpeg; default: guessed)")
    p.add_argument("--stream-option", action="append", default=[], metavar="KEY=VALUE",
                   help="--stream: an ffmpeg input option, e.g. rtsp_transport=tcp (repeatable)")
    p.add_argument("--timeout", type=_positive_float, default=10.0,
                   help="--stream: seconds to wait for a network source's data (10)")
    p.add_argument("--explain", metavar="DIR",
                   help="write per-segment centre frame, motion energy and class-activation map (PNG + GIF) to DIR")
    p.add_argument("--class", dest="target_class", type=int, help="--explain: the class to explain (default: top-1)")
    p.add_argument("--out", default=".", help="--timeline: output folder (default: the current folder)")
    args = p.parse_intermixed_args(argv)  # videos and overrides may come before or after the options
    overrides = [v for v in args.videos if is_override(v)]
    videos = [v for v in args.videos if not is_override(v)]
    if args.stream is not None:
        if videos:
            p.error("give VIDEO files or --stream SOURCE, not both")
        if args.timeline or args.explain:
            p.error("--stream prints predictions live; --timeline and --explain take VIDEO files")
    elif not videos:
        p.error("no VIDEO given (section.key=value arguments are config overrides)")
    if args.stride is not None and args.stride_segments is not None:
        p.error("give --stride SECONDS or --stride-segments N, not both")
    stream_options = {}
    for item in args.stream_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--stream-option {item!r}: expected KEY=VALUE")
        stream_options[key] = value

    def usage_error(message) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    from tdsk.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_folder

    # Cheap checks first: a typo in a path is reported now, not after loading a model.
    if os.path.isdir(args.checkpoint) and not is_model_folder(args.checkpoint):
        return usage_error(f"--checkpoint {args.checkpoint}: is a directory, expected a checkpoint file or a model "
                           f"folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    if not os.path.exists(args.checkpoint):
        return usage_error(f"--checkpoint {args.checkpoint}: no such file")
    if args.labels and args.classes:
        return usage_error("--labels (names shown) and --classes (the classes scored): give one")
    for flag, path in (("--labels", args.labels), ("--classes", args.classes)):
        if path and not os.path.isfile(path):
            return usage_error(f"{flag} {path}: no such file")
    emit = _printer(args.json)
    present, failed = [], 0
    if args.stream is not None:
        present = [args.stream]
    for v in videos:
        inside = _videos_in(v)
        if inside is not None:  # a folder of video files (not a frame folder): each video in it
            if not inside:
                emit({"path": v, "error": "a folder with neither frame files nor video files"})
                failed += 1
            present.extend(inside)
        elif os.path.exists(v):
            present.append(v)
        else:
            emit({"path": v, "error": "no such file or directory"})
            failed += 1
    if not present:
        return 1

    from tdsk.data import DataConfig
    from tdsk.cli import _common as common
    from tdsk.inference import Recognizer, resolve_device

    try:
        device = resolve_device(args.device)
        model, cfg, classes = common.load_for_inference(args.checkpoint, args.cfg, overrides, device=str(device))
        DataConfig.from_dict(cfg["data"])  # a bad data setting: one message now, not one per video
        if args.labels:
            from tdsk.data.labels import labels_for_model

            classes = labels_for_model(args.labels, getattr(model, "num_classes", None), f"--labels {args.labels}")
        if args.classes:
            classes = common.read_labels(args.classes)
        views = args.views or tuple((cfg.get("eval") or {}).get("views") or ()) or None
        rec = Recognizer(model, cfg, classes, device=device, precision=args.precision, compile=args.compile,
                         views=views, source=args.checkpoint, switch_classes=bool(args.classes))
    except common.user_errors(loading=True) as exc:
        return usage_error(exc)
    if args.stream is not None:
        return _stream_mode(rec, args, stream_options)
    if args.timeline or args.explain:
        failed += _long_video_modes(rec, present, args, emit)
        return 1 if failed else 0
    try:
        results = predict(rec, cfg, present, views=views, top=args.top, on_result=emit)
    except common.user_errors() as exc:
        return usage_error(exc)
    failed += sum("error" in r for r in results)
    return 1 if failed else 0


def _long_video_modes(rec, paths, args, emit) -> int:
    """``--timeline`` / ``--explain`` for each video; returns the number of videos that failed."""
    import json

    from tdsk.cli import _common as common

    failed = 0
    for path in paths:
        stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        try:
            if args.timeline:
                res = rec.timeline(path, stride=args.stride_segments, stride_seconds=args.stride, out_dir=args.out,
                                   top_k=args.top, clip_seconds=args.clip_seconds, stem=f"{stem}_timeline")
                if args.json:
                    print(json.dumps({"path": path, **common.json_safe(res.to_dict()), "files": res.paths}))
                else:
                    print(f"{path}: {len(res.rows)} windows")
                    for seg in res.segments:
                        print(f"  {seg['start']:7.1f} - {seg['end']:7.1f} s  {seg['label']}  ({seg['mean_prob']:.2f})")
                    for kind, file in res.paths.items():
                        print(f"  {kind:5s} {file}")
            if args.explain:
                ex = rec.explain(path, args.explain, args.target_class, stem=stem)
                msg = {"path": path, "explained": ex.label, "prob": ex.prob, "grid": ex.grid_path, "gif": ex.gif_path}
                print(json.dumps(msg) if args.json else f"{path}: explained {ex.label} ({100 * ex.prob:.1f}%): "
                                                        f"{ex.grid_path}, {ex.gif_path}")
        except common.user_errors(loading=True) as exc:
            emit({"path": path, "error": str(exc)})
            failed += 1
    return failed

def _stream_mode(rec, args, options) -> int:
    """``--stream SOURCE``: one line (or JSON object) per window, printed as soon as it is known."""
    import itertools
    import json

    from tdsk.cli import _common as common
    from tdsk.timeline import TimelineEngine, VideoFrames, live_source, stream

    src, fmt = live_source(args.stream)
    live = not os.path.isfile(src)
    try:
        frames = VideoFrames(src, live=live, format=args.stream_format or fmt, options=options,
                             timeout=args.timeout if live else None, fps=args.fps)
        engine = TimelineEngine(rec, frames.fps, stride=args.stride_segments, stride_seconds=args.stride,
                                clip_seconds=args.clip_seconds, top_k=args.top)
    except KeyboardInterrupt:
        print(f"stopped (Ctrl-C) while opening {args.stream}", file=sys.stderr, flush=True)
        return 0
    except common.user_errors(loading=True) as exc:
        print(f"error: --stream: {exc}", file=sys.stderr)
        return 1
    source = iter(frames)
    if args.duration:
        source = itertools.islice(source, max(1, int(round(args.duration * frames.fps))))
    print(f"stream {args.stream}: {frames.fps:.2f} fps; {engine.window_seconds:.2f} s windows every "
          f"{engine.stride * engine.segment_seconds:.2f} s" + (" (Ctrl-C stops)" if live else ""),
          file=sys.stderr if args.json else sys.stdout, flush=True)
    windows = 0
    try:
        for row in stream(None, source, frames.fps, engine=engine):
            windows += 1
            if args.json:
                print(json.dumps({"source": args.stream, **{k: v for k, v in row.items() if k != "logits"}}),
                      flush=True)
            else:
                print(f"{row['start']:9.2f} - {row['end']:9.2f} s  "
                      + "  ".join(f"{t['label']} {t['prob']:.2f}" for t in row["top"]), flush=True)
    except KeyboardInterrupt:
        print(f"stopped (Ctrl-C) after {windows} window(s), {engine.frames_seen} frames", file=sys.stderr,
              flush=True)
        return 0
    except common.user_errors(loading=True) as exc:
        print(f"error: --stream {args.stream}: after {windows} window(s): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        frames.close()
    if not args.json:
        print(f"end of stream: {windows} window(s), {engine.frames_seen} frames "
              f"({engine.frames_seen / frames.fps:.1f} s)", flush=True)
    return 0


def _videos_in(path: str):
    """The video files in folder ``path`` (sorted) when it holds videos and no images (a frame
    folder stays one video); ``[]`` for a folder of neither; ``None`` when not a folder."""
    if not os.path.isdir(path):
        return None
    from tdsk.data.custom import VIDEO_EXTENSIONS

    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    if any(n.lower().endswith((".jpg", ".jpeg", ".png")) for n in names):
        return None
    return [os.path.join(path, n) for n in names if n.lower().endswith(VIDEO_EXTENSIONS)
            and os.path.isfile(os.path.join(path, n))]


def _bounded_float(limit_name: str):
    def parse(text: str) -> float:
        import tdsk.timeline  # noqa: PLC0415  (the bounds' home; imported when an argument is parsed)

        limit = getattr(tdsk.timeline, limit_name)
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
        if not (0 < value <= limit):  # NaN fails too; 1e308 s overflowed frame counts
            raise argparse.ArgumentTypeError(f"expected a number > 0 (at most {limit:g}), got {text!r}")
        return value
    return parse


_positive_float = _bounded_float("MAX_SECONDS")  # seconds
_fps_float = _bounded_float("MAX_FPS")


if __name__ == "__main__":
    sys.exit(main())
