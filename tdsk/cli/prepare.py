"""Prepare a data set for training: ``python -m tdsk.data.prepare frames --videos ... --out DIR``.

``frames`` extracts every video's frames as JPEG files in the official frame-folder
layout (``<out>/<video path without extension>/img_00001.jpg``..., numbered from 1,
``--template`` to change), the way the official Something-Something V2 recipe trains,
and writes the 3-column list ``<frame_dir> <num_frames> <label>`` (paths relative to
``--out``, so ``data.root=<out>``).

Input (``--videos``):

* an annotation list ``<path> <label>`` (paths relative to ``--root``): labels come
  from the list;
* a folder ``<root>/<class>/<video>`` (any depth below the class folder): the class is
  the first folder name, classes are numbered in sorted order (or in the order of
  ``--labels``, or of an existing ``<out>/labels.txt``, so that train and val prepared
  into one ``--out`` agree) and ``<out>/labels.txt`` is written;
* a folder of videos without class folders: every label is 0.

Frames are decoded with PyAV in presentation order with the display rotation applied,
exactly the frames :class:`tdsk.data.decoders.PyAVVideo` returns (frame ``i`` of the
folder is ``PyAVVideo.get_frames([i])``), optionally resampled to ``--fps`` (nearest
frame in time) and resized to ``--short-side`` (PIL bicubic, aspect kept), and written
with Pillow at ``--quality``.

Resumable: a folder is finished when its marker ``.tdsk_frames.json`` (written last,
atomically; it records the frame count and the settings) is there and its frame files
are present; a finished folder is skipped, anything else (no marker: a run that was
stopped half-way; other settings) is cleared and extracted again. Bad videos (missing,
truncated, corrupt, ...) are listed in ``<list stem>.errors.csv`` and left out of the
list; they never stop the run. Exit code: 0 every video is in the list, 1 some videos
were bad and left out, 2 usage error (bad arguments, unreadable input, no video found,
``--out`` not writable). docs/data-tools.md describes the tool.

``few-shot --list L --shots K --seed S --out F`` writes the K-shot list of the few-shot
protocol (docs/protocols.md): K lines of every class of ``L``, drawn with ``S`` exactly as the
recipe option ``data.few_shot: K`` draws them, copied in list order.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tdsk import _io
from tdsk._paths import PathCollisionError, check_distinct, check_replaceable, record_written

from tdsk.cli._workers import UsageError, default_workers, parallel_map, progress_bar, read_class_names, \
    template_matcher

__all__ = ["main", "prepare_frames", "write_few_shot_list", "PrepareResult", "MARKER", "VIDEO_EXTENSIONS"]

MARKER = ".tdsk_frames.json"
MARKER_VERSION = 1
from tdsk.data.custom import VIDEO_EXTENSIONS  # noqa: E402  (one list of video extensions)
EXIT_OK, EXIT_BAD_VIDEOS, EXIT_USAGE = 0, 1, 2


# -- decoding (PyAVVideo's frames, streamed) ---------------------------------------------------

def _decoded(path: str, expected: int) -> Iterator[Tuple[Optional[float], np.ndarray]]:
    """``(time in s or None, uint8[H, W, 3])`` for the ``expected`` frames of ``path`` in
    presentation order (one sequential decode). Raises DecodeError."""
    import av

    from tdsk.data.decoders import DecodeError, apply_orientation, frame_orientation, to_rgb

    try:
        container = av.open(path)
    except Exception as exc:
        raise DecodeError(path, f"cannot open as a video ({type(exc).__name__}: {exc})") from None
    count = 0
    shape = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        orientation, known = None, False
        decoding = container.decode(stream)
        while count < expected:
            try:
                frame = next(decoding)
            except StopIteration:
                break
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(path, f"decoding failed at frame {count} ({type(exc).__name__}: {exc})") from None
            if not known:
                orientation, known = frame_orientation(frame, path), True
            rgb = apply_orientation(to_rgb(frame), orientation)
            if shape is None:
                shape = rgb.shape
            elif rgb.shape != shape:
                raise DecodeError(path, f"frame size changes inside the video ({shape} -> {rgb.shape})")
            yield frame.time, rgb
            count += 1
    finally:
        container.close()
    if count < expected:
        raise DecodeError(path, f"stream ended before frame {count} (index has {expected} frames; "
                                "truncated or corrupt)")


def _resampled(frames: Iterator[Tuple[Optional[float], np.ndarray]], fps: Optional[float],
               native_fps: Optional[float]) -> Iterator[np.ndarray]:
    """All frames (``fps`` None), or output frame ``k`` = the input frame nearest in time to
    ``t0 + k / fps``, for ``k / fps`` before the end of the last frame."""
    if not fps:
        for _, rgb in frames:
            yield rgb
        return
    step = 1.0 / float(native_fps) if native_fps else None
    k, t0 = 0, None
    prev_t, prev = None, None
    for t, rgb in frames:
        if t is None:
            t = (prev_t + (step or 1.0 / fps)) if prev_t is not None else 0.0
        if t0 is None:
            t0 = t
        if prev is not None:
            middle = (prev_t + t) / 2.0
            while t0 + k / fps < middle - 1e-9:
                yield prev
                k += 1
        prev_t, prev = t, rgb
    if prev is None:
        return
    end = prev_t + (step or 1.0 / fps)
    while t0 + k / fps < end - 1e-6 or k == 0:
        yield prev
        k += 1


def _resize(img, short_side: Optional[int]):
    if not short_side:
        return img
    from PIL import Image

    w, h = img.size
    if min(w, h) == short_side:
        return img
    if w <= h:
        size = (short_side, max(1, int(h * short_side / w + 0.5)))
    else:
        size = (max(1, int(w * short_side / h + 0.5)), short_side)
    bicubic = getattr(Image, "Resampling", Image).BICUBIC
    return img.resize(size, bicubic)


# -- one video (runs in a worker) --------------------------------------------------------------

class _WriteError(Exception):
    pass


def _settings(job: Dict[str, Any]) -> Dict[str, Any]:
    return {"template": job["template"], "fps": job["fps"], "short_side": job["short_side"],
            "quality": job["quality"]}


def _finished(job: Dict[str, Any]) -> Optional[int]:
    """The frame count of a finished folder for ``job`` (same settings, files there), else None."""
    folder = job["dst"]
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as handle:
            marker = json.load(handle)
        n = int(marker["num_frames"])
        if marker.get("version") != MARKER_VERSION or marker.get("settings") != _settings(job) or n < 1:
            return None
        size = marker.get("source_size")
        if size is not None and os.path.exists(job["src"]) and os.path.getsize(job["src"]) != size:
            return None  # the video changed since
        names = set(os.listdir(folder))
        if any(job["template"].format(i) not in names for i in range(1, n + 1)):
            return None
        if os.path.getsize(os.path.join(folder, job["template"].format(n))) == 0:
            return None
        return n
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clear(folder: str, template: str) -> None:
    """Remove the marker and the frame files (only those) of a half-written folder."""
    number = template_matcher(template)
    for name in os.listdir(folder):
        marker_tmp = name.startswith(f".{MARKER}.") and name.endswith(".tmp")  # tdsk._io's temp name
        if name in (MARKER, MARKER + ".tmp") or marker_tmp or number(name) is not None:
            os.remove(os.path.join(folder, name))


def _write_marker(job: Dict[str, Any], n: int) -> None:
    path = os.path.join(job["dst"], MARKER)
    size = os.path.getsize(job["src"]) if os.path.exists(job["src"]) else None
    data = {"version": MARKER_VERSION, "num_frames": n, "settings": _settings(job),
            "source": os.path.abspath(job["src"]), "source_size": size}
    _io.write_text(path, json.dumps(data))


def extract_video(job: Dict[str, Any]) -> Dict[str, Any]:
    """Extract one video into ``job['dst']``; never raises. Returns ``status``
    (extracted | skipped | bad | write_error), ``num_frames``, ``reason``, ``redone``."""
    from PIL import Image

    from tdsk.data.decoders import DecodeError, PyAVVideo

    out: Dict[str, Any] = {"status": "bad", "num_frames": None, "reason": "", "redone": False}
    folder, template = job["dst"], job["template"]
    try:
        n = _finished(job)
        if n is not None:
            out.update(status="skipped", num_frames=n)
            return out
        try:
            if os.path.isdir(folder):
                out["redone"] = os.listdir(folder) != []
                _clear(folder, template)
        except OSError as exc:
            raise _WriteError(f"cannot clear {folder}: {exc}") from None
        try:
            with PyAVVideo(job["src"], threads=1) as video:  # validates, counts, detects truncation
                expected = video.num_frames
                rate = getattr(video.stream, "average_rate", None) or getattr(video.stream, "guessed_rate", None)
        except DecodeError as exc:
            out["reason"] = exc.reason
            return out
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise _WriteError(f"cannot create {folder}: {exc}") from None
        count = 0
        try:
            for rgb in _resampled(_decoded(job["src"], expected), job["fps"], float(rate) if rate else None):
                img = _resize(Image.fromarray(np.ascontiguousarray(rgb)), job["short_side"])
                count += 1
                try:
                    img.save(os.path.join(folder, template.format(count)), format="JPEG", quality=job["quality"])
                except OSError as exc:
                    raise _WriteError(f"cannot write {os.path.join(folder, template.format(count))}: {exc}") from None
        except DecodeError as exc:
            out["reason"] = exc.reason
            _clear(folder, template)
            _remove_if_empty(folder)
            return out
        if count == 0:
            out["reason"] = "no frame was decoded"
            _remove_if_empty(folder)
            return out
        try:
            _write_marker(job, count)
        except OSError as exc:
            raise _WriteError(f"cannot write the marker in {folder}: {exc}") from None
        out.update(status="extracted", num_frames=count)
    except _WriteError as exc:
        out.update(status="write_error", reason=str(exc))
    except Exception as exc:  # an unexpected decoder / image error: this video is bad, the run goes on
        out["reason"] = f"extraction failed ({type(exc).__name__}: {exc})"
    return out


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _crashed(job: Dict[str, Any], why: str) -> Dict[str, Any]:
    return {"status": "bad", "num_frames": None, "reason": why, "redone": False}


# -- the jobs ----------------------------------------------------------------------------------

def _is_video(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def _inside(path: str, folder: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top + os.sep)


def _walk_videos(folder: str, tree: Optional[str] = None, notes: Optional[List[str]] = None) -> List[str]:
    """Video files under ``folder``, sorted. Linked folders are followed once each (a link
    back up the tree looped: 2 videos became 902 entries); with ``tree`` (the input folder),
    a link from this class folder into another part of the tree is left out with a note (its
    videos belong to the class folder they are in, not to this one)."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))

        def crosses(full: str, what: str) -> bool:
            """A link from this class folder into another part of the input tree (noted)."""
            if os.path.islink(full) and tree is not None and _inside(full, tree) and not _inside(full, folder):
                if notes is not None:
                    notes.append(f"{full}: a link to {what}, left out")
                return True
            return False

        dirnames[:] = [d for d in sorted(dirnames)
                       if not d.startswith(".") and not crosses(os.path.join(dirpath, d), "another part of the input folder")]
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if _is_video(f) and not crosses(os.path.join(dirpath, f), "a video of another class folder")]
    return found


def _frame_dir(rel: str) -> str:
    """Frame folder (relative to --out) for a video path as the input gives it."""
    rel = os.path.normpath(rel)
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        rel = os.path.basename(rel)
    stem, ext = os.path.splitext(rel)
    return stem if ext else rel + "_frames"


class PrepareResult:
    """``entries``: the list lines written (frame dir, frames, label); ``bad``: (line, path,
    reason); ``counts``: extracted / skipped / redone / bad; ``list_path``, ``labels_path``,
    ``errors_path``."""

    def __init__(self):
        self.entries: List[Tuple[str, int, int]] = []
        self.bad: List[Tuple[int, str, str]] = []
        self.counts: Counter = Counter()
        self.list_path = self.labels_path = self.errors_path = None
        self.notes: List[str] = []
        self.seconds = 0.0


def _jobs_from_input(videos: str, root: str, out: str, labels: Optional[str], result: PrepareResult):
    """``(jobs, class_names or None, default list name)``; jobs: dict(line, src, rel, label)."""
    from tdsk.data.lists import ListFormatError, parse_list

    if os.path.isfile(videos):
        try:
            records = parse_list(videos, root=root, fmt="video")
        except ListFormatError as exc:
            raise UsageError(f"the list does not parse:\n{exc}") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the list {videos}: {exc}") from None
        jobs = []
        for rec in records:
            rel = os.path.relpath(rec.path, root) if root else rec.path
            jobs.append({"line": rec.line, "src": rec.path, "rel": _frame_dir(rel), "label": rec.label})
        names = read_class_names(labels) if labels else None
        return jobs, names, os.path.basename(videos)
    if not os.path.isdir(videos):
        raise UsageError(f"--videos {videos}: no such file or folder")
    top = os.path.normpath(videos)
    entries = sorted(os.listdir(top))
    folders = [d for d in entries if not d.startswith(".") and os.path.isdir(os.path.join(top, d))]
    blank = [d for d in folders if not d.strip() or d != d.strip()]
    if blank:  # a labels.txt line cannot hold such a name
        raise UsageError(f"class folder name {blank[0]!r} in {videos}: blank, or with spaces around it; "
                         "rename the folder")
    videos_of = {d: _walk_videos(os.path.join(top, d), top, result.notes) for d in folders}  # one walk each
    with_videos = {d for d in folders if videos_of[d]}
    # a class folder without videos keeps its place in the numbering (leaving it out shifted every
    # later class), with a note; folders of no video at all mean no classes
    class_dirs = folders if with_videos else []
    for d in folders:
        if with_videos and d not in with_videos:
            result.notes.append(f"class folder {d!r} holds no video: class {folders.index(d)} has no examples")
    if with_videos and len(folders) == 1:
        result.notes.append(f"only one class folder ({folders[0]!r}): every video gets label 0")
    loose = [f for f in entries if os.path.isfile(os.path.join(top, f)) and _is_video(f)]
    list_name = (os.path.basename(top) or "frames") + ".txt"
    if not class_dirs:
        if not loose:
            raise UsageError(f"--videos {videos}: no video files found (extensions {', '.join(VIDEO_EXTENSIONS)})")
        result.notes.append(f"{videos} holds no class folders: every video gets label 0 "
                            "(use <root>/<class>/<video> or a <path> <label> list for labels)")
        jobs = [{"line": i + 1, "src": os.path.join(top, f), "rel": _frame_dir(f), "label": 0}
                for i, f in enumerate(loose)]
        return jobs, None, list_name
    existing = os.path.join(out, "labels.txt")
    if labels:
        names = read_class_names(labels)
    elif os.path.isfile(existing):
        names = read_class_names(existing)
        result.notes.append(f"class numbering from the existing {existing}")
    else:
        names = class_dirs
    index = {name: i for i, name in enumerate(names)}
    unknown = [d for d in class_dirs if d not in index and d in with_videos]
    if unknown:
        source = labels or existing
        raise UsageError(f"class folders not in {source}: {', '.join(unknown[:20])}"
                         f"{' ...' if len(unknown) > 20 else ''} (give --labels with every class name, "
                         "or remove the old labels.txt)")
    if loose:
        result.notes.append(f"{len(loose)} video(s) directly in {videos} (not in a class folder) are left out, "
                            f"e.g. {loose[0]}")
    jobs = []
    for d in class_dirs:
        for path in videos_of.get(d, []):
            jobs.append({"line": len(jobs) + 1, "src": path, "rel": _frame_dir(os.path.relpath(path, top)),
                         "label": index[d]})
    return jobs, names, list_name


def prepare_frames(videos: str, out: str, root: str = "", fps: Optional[float] = None,
                   short_side: Optional[int] = None, template: str = "img_{:05d}.jpg", workers: int = 1,
                   quality: int = 95, labels: Optional[str] = None, list_out: Optional[str] = None,
                   progress: bool = False, overwrite: bool = False) -> PrepareResult:
    """Extract frame folders and write the 3-column list (see the module docstring).
    Raises :class:`~tdsk.cli._workers.UsageError` for bad arguments / inputs / output.

    The list, its ``.errors.csv`` and ``labels.txt`` never replace a file tdsk did not write
    (a user's own ``<out>/train.txt``, say) unless ``overwrite``; none may be an input."""
    template_matcher(template)
    if fps is not None and not fps > 0:
        raise UsageError(f"--fps must be > 0, got {fps}")
    if short_side is not None and short_side < 1:
        raise UsageError(f"--short-side must be >= 1, got {short_side}")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {quality}")
    if root and not os.path.isdir(root):
        raise UsageError(f"--root {root}: no such directory")
    result = PrepareResult()
    t0 = time.perf_counter()
    jobs, names, list_name = _jobs_from_input(videos, root, out, labels, result)
    if not jobs:
        raise UsageError(f"--videos {videos}: no video to prepare")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {out}: {exc}") from None
    list_path = list_out or os.path.join(out, list_name)
    if os.path.isfile(videos) and os.path.exists(list_path) and os.path.samefile(list_path, videos):
        stem, ext = os.path.splitext(list_name)
        list_path = os.path.join(out, f"{stem}_frames{ext or '.txt'}")
    errors_path = f"{os.path.splitext(list_path)[0]}.errors.csv"
    labels_path = os.path.join(out, "labels.txt") if names is not None else None
    outputs = {"the list (--list-out)": list_path, "the error report": errors_path, "labels.txt": labels_path}
    inputs = {"--videos": videos if os.path.isfile(videos) else None,
              "--labels": labels if isinstance(labels, str) and os.path.isfile(labels) else None}
    try:
        check_distinct(outputs, inputs)
        for what, path in outputs.items():
            if path:
                check_replaceable(path, what, overwrite)
    except (PathCollisionError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None

    # One extraction per frame folder; a second video mapped to the same folder is bad.
    owner: Dict[str, Dict[str, Any]] = {}
    work: List[Dict[str, Any]] = []
    for job in jobs:
        dst = os.path.abspath(os.path.join(out, job["rel"]))
        job["dst"] = dst
        first = owner.get(dst)
        if first is None:
            if os.path.abspath(job["src"]) == dst:
                result.bad.append((job["line"], job["src"], "its frame folder would replace the video"))
                continue
            owner[dst] = job
            work.append({"src": job["src"], "dst": dst, "template": template, "fps": fps,
                         "short_side": short_side, "quality": int(quality)})
        elif os.path.abspath(first["src"]) != os.path.abspath(job["src"]):
            job["conflict"] = first
    slot = {w["dst"]: i for i, w in enumerate(work)}
    outcome: Dict[int, Dict[str, Any]] = {}
    bar = progress_bar(len(work), "frames", progress)
    try:
        for i, res in parallel_map(extract_video, work, workers, _crashed, bar):
            if res["status"] == "write_error":
                raise UsageError(f"cannot write to --out: {res['reason']}")
            outcome[i] = res
            result.counts[res["status"]] += 1
            result.counts["redone"] += bool(res.get("redone"))
            if progress and i % 16 == 0:
                bar.set_postfix(extracted=result.counts["extracted"], skipped=result.counts["skipped"],
                                bad=result.counts["bad"], refresh=False)
    finally:
        bar.close()

    for job in jobs:
        if "dst" not in job or job["dst"] not in slot:
            continue  # reported above
        if "conflict" in job:
            first = job["conflict"]
            result.bad.append((job["line"], job["src"], f"frame folder {job['rel']} is already the one of "
                                                        f"{first['src']} (line {first['line']})"))
            continue
        res = outcome[slot[job["dst"]]]
        if res["status"] in ("extracted", "skipped"):
            result.entries.append((job["rel"], int(res["num_frames"]), int(job["label"])))
        else:
            result.bad.append((job["line"], job["src"], res["reason"]))
    result.bad.sort()
    result.counts["bad"] = len(result.bad)

    try:
        _io.write_text(list_path, "".join(f"{rel} {n} {label}\n" for rel, n, label in result.entries))
        result.errors_path = errors_path
        _io.write_csv(errors_path, result.bad, header=["line", "path", "reason"])
        if labels_path is not None:  # the class folders' numbering, or --labels
            result.labels_path = labels_path
            _io.write_text(labels_path, "".join(f"{n}\n" for n in names))
        for path in (list_path, errors_path, labels_path):
            if path:
                record_written(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)], "data.prepare")
    except OSError as exc:
        raise UsageError(f"cannot write the list to {out}: {exc}") from None
    result.list_path = list_path
    result.seconds = time.perf_counter() - t0
    return result


# -- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tdsk.data.prepare",
                                description="Prepare a data set for training (see docs/data-tools.md).")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser(
        "frames", help="extract JPEG frame folders and write the <frame_dir> <num_frames> <label> list",
        description="Extract every video's frames as JPEGs (official layout, numbered from 1), in parallel and "
                    "resumably, and write the 3-column list. Exit 0: all videos prepared; 1: bad videos were "
                    "left out (listed in <list>.errors.csv); 2: usage error.")
    f.add_argument("--videos", required=True,
                   help="a <path> <label> list, or a folder <root>/<class>/<video> (labels from the class "
                        "folders, labels.txt written), or a folder of videos (label 0)")
    f.add_argument("--out", required=True, help="output folder: frame folders, the list, labels.txt")
    f.add_argument("--root", default="", help="directory the --videos list's paths are relative to")
    f.add_argument("--fps", type=float, help="resample to this frame rate (default: every frame)")
    f.add_argument("--short-side", type=int, help="resize so the short side is this many pixels (PIL bicubic)")
    f.add_argument("--template", default="img_{:05d}.jpg", help="frame file names (default img_{:05d}.jpg)")
    f.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    f.add_argument("--workers", type=int, default=default_workers(),
                   help="worker processes (default: min(8, CPUs)); 0 or 1: in this process")
    f.add_argument("--labels", help="class names in index order (labels.txt, index,name CSV, JSON): fixes the "
                                    "numbering of the class folders; copied to <out>/labels.txt")
    f.add_argument("--list-out", help="path of the list to write (default: <out>/<list name> for a list input, "
                                      "<out>/<folder name>.txt for a folder)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument("--overwrite", action="store_true",
                   help="replace a list / labels.txt in --out that tdsk did not write (never an input)")
    k = sub.add_parser(
        "few-shot", help="write a K-shot list: K entries per class of a list, drawn from a seed",
        description="Write the K-shot training list of the few-shot protocol (docs/protocols.md): K entries of "
                    "every class of --list, drawn with --seed (the draw of the recipe option data.few_shot), the "
                    "lines copied as they are, in list order. Exit 0: written; 2: usage error (a class with "
                    "fewer than K entries included).")
    k.add_argument("--list", required=True, help="an annotation list (<path> <label> or <dir> <n> <label>)")
    k.add_argument("--shots", type=int, required=True, help="K: entries per class (>= 1)")
    k.add_argument("--seed", type=int, default=0, help="which K entries (default 0; data.few_shot_seed)")
    k.add_argument("--out", required=True, help="the K-shot list to write")
    k.add_argument("--format", default="auto", choices=["auto", "frames", "video"], help="list format (default auto)")
    k.add_argument("--min-frames", type=int, default=8,
                   help="drop 3-column entries shorter than this before drawing, as training does "
                        "(data.min_frames; default 8)")
    k.add_argument("--overwrite", action="store_true", help="replace an --out that tdsk did not write (never --list)")
    return p


def write_few_shot_list(list_file: str, shots: int, seed: int, out: str, fmt: str = "auto",
                        overwrite: bool = False, min_frames: int = 8) -> Tuple[int, int]:
    """``python -m tdsk.data.prepare few-shot``: write ``out``, the lines of ``list_file`` that
    :func:`tdsk.data.protocols.few_shot_records` keeps. Returns ``(entries, classes)``;
    :class:`UsageError` for bad input (one line)."""
    from tdsk.data.lists import ListFormatError, parse_list
    from tdsk.data.protocols import few_shot_records
    from tdsk.schema import ConfigError

    if shots < 1:
        raise UsageError(f"--shots must be >= 1 entries per class, got {shots}")
    try:
        check_distinct({"--out": out}, {"--list": list_file})
        check_replaceable(out, "--out", overwrite)
        # the candidates training draws from: the same min_frames filter (tdsk.data.loader.load_records)
        records = parse_list(list_file, "", fmt, min_frames=min_frames)
        kept = few_shot_records(records, shots, seed, list_file, key="--shots")
    except (PathCollisionError, FileExistsError, FileNotFoundError, ListFormatError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    with open(list_file, "rb") as f:  # split bytes as parse_list counts lines (str.splitlines also splits on \x85)
        data = f.read()
    lines = data.splitlines()
    text = "".join(lines[r.line - 1].removeprefix(b"\xef\xbb\xbf").decode("utf-8").strip() + "\n" for r in kept)
    try:
        _io.write_text(out, text)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc}") from None
    record_written(os.path.dirname(os.path.abspath(out)), [os.path.basename(out)], "data.prepare")
    return len(kept), len({r.label for r in kept})


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    args = build_parser().parse_args(argv)
    if args.command == "few-shot":
        try:
            n, k = write_few_shot_list(args.list, args.shots, args.seed, args.out, args.format, args.overwrite,
                                       args.min_frames)
        except UsageError as exc:
            print(f"tdsk.data.prepare: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {args.out}: {n} entries, {args.shots} of each of {k} classes (seed {args.seed})")
        return EXIT_OK
    try:
        result = prepare_frames(args.videos, args.out, root=args.root, fps=args.fps, short_side=args.short_side,
                                template=args.template, workers=args.workers, quality=args.quality,
                                labels=args.labels, list_out=args.list_out, progress=not args.no_progress,
                                overwrite=args.overwrite)
    except UsageError as exc:
        print(f"tdsk.data.prepare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tdsk.data.prepare: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    try:
        _print_summary(result, args)
    except BrokenPipeError:  # `... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BAD_VIDEOS if result.bad else EXIT_OK


def _print_summary(result: PrepareResult, args) -> None:
    c = result.counts
    for note in result.notes:
        print(f"note: {note}")
    print(f"{len(result.entries) + len(result.bad)} videos in {result.seconds:.1f} s: {c['extracted']} extracted "
          f"({c['redone']} of them redone), {c['skipped']} already done (skipped), {len(result.bad)} bad")
    for line, path, reason in result.bad[:20]:
        print(f"  bad: line {line}: {path}: {reason}")
    if len(result.bad) > 20:
        print(f"  ... and {len(result.bad) - 20} more")
    print(f"wrote {result.list_path} ({len(result.entries)} entries), {result.errors_path}"
          + (f", {result.labels_path}" if result.labels_path else ""))
    print(f"train with: data.root={os.path.abspath(args.out)} data.train_list={os.path.abspath(result.list_path)} "
          f"data.format=frames data.template={args.template}")


if __name__ == "__main__":
    sys.exit(main())
