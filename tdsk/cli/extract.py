"""Features for downstream tasks: ``python -m tdsk.extract LIST --checkpoint CKPT --out DIR``.

For every entry of ``LIST`` (an annotation list, ``<path> <label>`` or ``<dir>
<num_frames> <label>``, paths relative to ``--root``, default the list's folder; a list
of bare paths works too, the labels are then empty) the pooled side-network feature
(the input of the classifier, :meth:`tdsk.inference.Recognizer.features`) is saved as
one ``.npy`` file: ``float32 [D]`` averaged over the recipe's test views, or ``[V, D]``
with ``--per-view``. Files go to ``DIR/features/<entry path>.npy`` (the entry path as
written in the list, relative to the root; entries outside the root get
``DIR/features/_external/<hash>-<name>.npy``).

Also written:

* ``DIR/index.csv``: ``index,path,label,feature,views,shape`` for every video that has a
  feature (``index``: position in the list; ``feature``: relative to ``DIR``);
* ``DIR/failed.csv``: ``index,path,label,reason`` for every video that could not be
  decoded or scored (never fatal; header only when none failed);
* ``DIR/extract.json``: the settings (checkpoint, recipe, views, per-view, precision)
  and the counts of the last run.

Resumable: a video whose ``.npy`` is already there with the expected shape is skipped
(each file is written to a temporary name and renamed, so a killed run leaves no torn
file); ``DIR/extract.json`` must describe the same settings, else the run stops (exit
2) unless ``--overwrite``. A progress bar shows videos/s and the ETA; one background
thread decodes ``--prefetch`` videos ahead of the model.

Under ``torchrun --nproc_per_node N -m tdsk.extract ...`` rank ``r`` of ``W`` takes the
entries ``r, r+W, ...``; each rank writes ``index.rank<r>.csv`` / ``failed.rank<r>.csv``
and, after a barrier, rank 0 merges them (list order) into ``index.csv`` and
``failed.csv`` and removes them.

Exit code: 0 when every video has a feature, 1 when some failed (listed in
``failed.csv``; under torchrun rank 0 says so for all ranks, the others exit 0), 2 for a
usage error (checkpoint, recipe, list, output folder).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from typing import List, NamedTuple, Sequence, Tuple

__all__ = ["main", "feature_name", "read_entries", "Entry"]

INDEX_FIELDS = ["index", "path", "label", "feature", "views", "shape"]
FAILED_FIELDS = ["index", "path", "label", "reason"]


class Entry(NamedTuple):
    """One list entry: position in the list, resolved path, label (-1: none), path as listed."""

    index: int
    path: str
    label: int
    rel: str


def read_entries(list_file: str, root: str, fmt: str = "auto") -> List[Entry]:
    """The list's entries in order. An annotation list (:func:`tdsk.data.parse_list`), or a
    list of bare paths (no line ends with an integer label): labels are then -1."""
    from tdsk.data import ListFormatError, parse_list

    try:
        records = parse_list(list_file, root, fmt)
    except ListFormatError:
        with open(list_file, encoding="utf-8-sig") as f:
            lines = [x.strip() for x in f if x.strip() and not x.strip().startswith("#")]
        if not lines or any(x.split()[-1].lstrip("-").isdigit() and len(x.split()) > 1 for x in lines):
            raise
        return [Entry(i, os.path.join(root, x) if root else x, -1, x) for i, x in enumerate(lines)]
    out = []
    for i, r in enumerate(records):
        rel = os.path.relpath(r.path, root) if root else r.path
        out.append(Entry(i, r.path, int(r.label), rel))
    return out


def feature_name(entry: Entry) -> str:
    """Where the entry's feature goes, relative to ``DIR``: ``features/<entry path>.npy``."""
    rel = os.path.normpath(entry.rel)
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        digest = hashlib.sha1(os.path.abspath(entry.path).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        rel = os.path.join("_external", f"{digest}-{os.path.basename(os.path.normpath(entry.path))}")
    return os.path.join("features", rel + ".npy")


def _expected_shape(per_view: bool, views: int, dim: int) -> Tuple[int, ...]:
    return (views, dim) if per_view else (dim,)


def _existing_ok(path: str, shape: Tuple[int, ...]) -> bool:
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r")
    except Exception:
        return False
    return tuple(arr.shape) == tuple(shape) and arr.dtype == np.float32


def _save_npy(path: str, array) -> None:
    import numpy as np

    from tdsk._checkpoint_io import atomic_write

    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: np.save(f, array))


def _write_csv(path: str, fields: Sequence[str], rows: Sequence[dict]) -> None:
    from tdsk import _io

    _io.write_csv(path, [[r.get(k, "") for k in fields] for r in rows], header=list(fields))


def _read_csv(path: str) -> List[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_json(path: str, obj) -> None:
    from tdsk import _io

    _io.write_text(path, json.dumps(obj, indent=1) + "\n")


def _reason(exc: BaseException) -> str:
    from tdsk.data import DecodeError
    from tdsk.inference import NonFiniteOutputError

    if isinstance(exc, DecodeError):
        return str(getattr(exc, "reason", None) or exc)
    if isinstance(exc, (NonFiniteOutputError, FileNotFoundError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _label_text(label: int) -> str:
    return "" if label < 0 else str(label)


def main(argv: Sequence[str] | None = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    from tdsk.cli._common import parse_views

    p = argparse.ArgumentParser(prog="python -m tdsk.extract", description=__doc__.split("\n\n")[0])
    p.add_argument("list", metavar="LIST", help="annotation list (or a list of paths), one video per line")
    p.add_argument("--checkpoint", required=True,
                   help="tdsk checkpoint, official TDS-CLIP file (with --cfg), or model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (features/, index.csv, failed.csv)")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--per-view", action="store_true", help="keep one feature per view: [V, D] instead of [D]")
    p.add_argument("--cfg", help="recipe (default: the one stored in a tdsk checkpoint / model folder)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the recipe's test views)")
    p.add_argument("--format", default="auto", choices=["auto", "frames", "video"], help="list format")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto: bf16 autocast where the hardware has fast bf16, fp16 on other GPUs, int8 linear "
                        "layers on other CPUs (logged); docs/inference.md")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    p.add_argument("--prefetch", type=int, default=2,
                   help="videos decoded ahead of the model by a background thread (default 2; 0: decode inline)")
    p.add_argument("--overwrite", action="store_true", help="recompute every feature (other settings allowed)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    args = p.parse_intermixed_args(argv)

    def usage_error(message) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    from tdsk.cli import _common as common

    # cheap checks before any model is loaded
    if not os.path.isfile(args.list):
        return usage_error(f"{args.list}: no such list file")
    root = args.root if args.root is not None else (os.path.dirname(os.path.abspath(args.list)))
    if not os.path.isdir(root):
        return usage_error(f"--root {root}: no such folder")
    if not os.path.exists(args.checkpoint):
        return usage_error(f"--checkpoint {args.checkpoint}: no such file or folder")
    try:
        entries = read_entries(args.list, root, args.format)
        if not entries:
            return usage_error(f"{args.list}: no entries")
        common.check_output_writable(args.out)
    except common.user_errors() as exc:
        return usage_error(exc)

    import numpy as np

    from tdsk.engine import distributed as D
    from tdsk.inference import Recognizer

    info = D.init(args.device, timeout_s=7 * 24 * 3600)  # the final barrier waits for the slowest shard

    def fail(message) -> int:
        D.shutdown(info, sync=False)  # the other ranks may be inside a collective: fail them now
        return usage_error(message)

    try:
        rec = Recognizer.from_pretrained(args.checkpoint, device=info.device, precision=args.precision, cfg=args.cfg,
                                         overrides=args.overrides, views=args.views, compile=args.compile)
    except common.user_errors(loading=True) as exc:
        return fail(exc)
    crops, clips = rec.views
    num_views = crops * clips
    dim = getattr(rec.model, "feature_dim", None)
    ck = os.stat(args.checkpoint) if os.path.isfile(args.checkpoint) else None
    # a model folder rewritten in place (save_pretrained after more training) is another model too
    folder_files = ([[n, os.stat(os.path.join(args.checkpoint, n)).st_size,
                      os.stat(os.path.join(args.checkpoint, n)).st_mtime_ns]
                     for n in sorted(os.listdir(args.checkpoint)) if os.path.isfile(os.path.join(args.checkpoint, n))]
                    if os.path.isdir(args.checkpoint) else None)
    settings = {"checkpoint": os.path.abspath(args.checkpoint), "cfg": args.cfg, "overrides": list(args.overrides),
                "views": [crops, clips], "per_view": bool(args.per_view), "root": os.path.abspath(root),
                # a checkpoint rewritten in place (best.pt after more training) is another model
                "checkpoint_file": [ck.st_size, int(ck.st_mtime)] if ck else folder_files,
                "precision": getattr(rec, "precision", None),
                "feature": "pooled side-network feature (classifier input), float32"}
    meta_path = os.path.join(args.out, "extract.json")
    if os.path.isfile(meta_path) and not args.overwrite:
        try:
            with open(meta_path) as f:
                before = json.load(f).get("settings", {})
        except (OSError, ValueError):
            before = {}
        differ = [k for k in ("checkpoint", "checkpoint_file", "cfg", "overrides", "views", "per_view", "root",
                              "precision") if before.get(k) != settings[k]]
        if differ:
            return fail(f"--out {args.out} holds features of other settings ("
                        + ", ".join(f"{k}: {before.get(k)!r} then, {settings[k]!r} now" for k in differ)
                        + "); use another --out, or --overwrite to recompute them")
    if info.is_main:
        _write_json(meta_path, {"settings": settings, "status": "running", "world_size": info.world_size})

    shard = entries[info.rank::info.world_size]
    done_rows, todo, failed = [], [], []
    for e in shard:
        name = feature_name(e)
        dst = os.path.join(args.out, name)
        if not args.overwrite and dim is not None and os.path.isfile(dst) \
                and _existing_ok(dst, _expected_shape(args.per_view, num_views, dim)):
            done_rows.append({"index": e.index, "path": e.path, "label": _label_text(e.label), "feature": name,
                              "views": num_views, "shape": "x".join(map(str, _expected_shape(args.per_view, num_views, dim)))})
        else:
            todo.append((e, name, dst))
    already = len(done_rows)

    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    bar = tqdm(total=len(shard), initial=already, unit="video", desc=f"extract{'' if info.world_size == 1 else f' rank {info.rank}'}",
               dynamic_ncols=True, disable=args.no_progress or not info.is_main, smoothing=0.1)
    written = 0
    start = time.time()
    # One decoding thread: decoding overlaps the model, but never runs in two threads at
    # once (tdsk.data's PyAV path keeps one swscale reformatter per process, not per thread).
    prefetch = max(0, int(args.prefetch))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdsk-decode") if prefetch else None

    def prepare(item):
        return rec.prepare(item[0].path)

    try:
        futures = []
        ahead = max(1, prefetch)

        def submit(k):
            if pool is not None and k < len(todo):
                futures.append(pool.submit(prepare, todo[k]))

        for k in range(ahead):
            submit(k)
        for k, item in enumerate(todo):
            e, name, dst = item
            try:
                clip = futures[k].result() if pool is not None else prepare(item)
                if pool is not None:
                    futures[k] = None
                    submit(k + ahead)
                feat = rec.features(clip, per_view=args.per_view).numpy().astype(np.float32, copy=False)
                _save_npy(dst, feat)
                written += 1
                done_rows.append({"index": e.index, "path": e.path, "label": _label_text(e.label), "feature": name,
                                  "views": num_views, "shape": "x".join(map(str, feat.shape))})
            except Exception as exc:  # a bad file is listed, never fatal
                if pool is not None and futures[k] is not None:
                    futures[k] = None
                    submit(k + ahead)
                failed.append({"index": e.index, "path": e.path, "label": _label_text(e.label), "reason": _reason(exc)})
                bar.write(f"failed: {e.path}: {failed[-1]['reason']}", file=sys.stderr)
            bar.update()
            bar.set_postfix(failed=len(failed), refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.time() - start

    done_rows.sort(key=lambda r: r["index"])
    failed.sort(key=lambda r: r["index"])
    counts = {"videos": len(shard), "written": written, "already_there": already, "failed": len(failed)}
    if info.world_size > 1:
        _write_csv(os.path.join(args.out, f"index.rank{info.rank}.csv"), INDEX_FIELDS, done_rows)
        _write_csv(os.path.join(args.out, f"failed.rank{info.rank}.csv"), FAILED_FIELDS, failed)
        _write_json(os.path.join(args.out, f"counts.rank{info.rank}.json"), counts)
        D.barrier(info)
        if not info.is_main:  # rank 0 reports (and sets the exit code for) every rank's failures
            D.shutdown(info)
            return 0
        done_rows, failed, counts = [], [], {k: 0 for k in counts}
        for r in range(info.world_size):
            parts = [os.path.join(args.out, f"{kind}.rank{r}.{ext}") for kind, ext in
                     (("index", "csv"), ("failed", "csv"), ("counts", "json"))]
            done_rows += _read_csv(parts[0])
            failed += _read_csv(parts[1])
            with open(parts[2]) as f:
                for k, v in json.load(f).items():
                    counts[k] += int(v)
            for part in parts:
                os.remove(part)
        done_rows.sort(key=lambda r: int(r["index"]))
        failed.sort(key=lambda r: int(r["index"]))
    index_path = os.path.join(args.out, "index.csv")
    failed_path = os.path.join(args.out, "failed.csv")
    _write_csv(index_path, INDEX_FIELDS, done_rows)
    _write_csv(failed_path, FAILED_FIELDS, failed)
    _write_json(meta_path, {"settings": settings, "status": "done", "world_size": info.world_size,
                            "precision": rec.precision, "dim": dim, "counts": counts, "seconds": round(seconds, 3)})
    shape = f"[{num_views}, {dim}] per view" if args.per_view else f"[{dim}] (mean of {num_views} views)"
    print(f"{counts['videos']} videos: {counts['written']} written, {counts['already_there']} already there, "
          f"{counts['failed']} failed ({seconds:.1f} s)\n"
          f"  features {shape}  {os.path.join(args.out, 'features')}\n  index     {index_path}"
          + (f"\n  failed    {failed_path}" if counts["failed"] else ""))
    if counts["failed"]:
        shown = "\n  ".join(f"{r['path']}: {r['reason']}" for r in failed[:10])
        more = f"\n  ... and {counts['failed'] - 10} more (see {failed_path})" if counts["failed"] > 10 else ""
        print(f"warning: {counts['failed']} video(s) failed:\n  {shown}{more}", file=sys.stderr)
    D.shutdown(info)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
