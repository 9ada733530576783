"""Check a dataset before training: ``python -m tdsk.data.check LIST [options]``.

Opens every entry of an annotation list in parallel (worker processes, a progress bar
with videos/s and ETA), indexes it and decodes the frames the validation sampler would
take (``T`` segments x ``M`` local frames, plus the last frame), and reports, sorted by
kind (see :data:`KINDS`):

* ``missing``      -- the file / frame folder does not exist;
* ``truncated``    -- a cut file (fewer frames than the container declares, packets that
  end before the declared duration, a stream that ends early);
* ``undecodable``  -- anything else that stops decoding (not a video, empty, corrupt
  payload, unreadable JPEG, a frame folder with a gap or no frame files);
* ``frame_count``  -- a 3-column entry whose frame count disagrees with its folder;
* ``short``        -- fewer frames than ``--num-segments`` (the model's window);
* ``label``        -- a label outside ``0..num_classes-1`` (``--labels`` / ``--num-classes``);
* ``duplicate``    -- the same path listed again (the first occurrence is kept).

It prints a summary (problems, videos per class, frame-count and duration percentiles)
and writes to ``--out`` (default ``<list>.check/`` next to the list): ``problems.csv``
(kind, line, path, reason, action), ``classes.csv`` and ``classes.png`` (videos per
class), ``<list stem>.clean<ext>`` (the list without the bad entries; a wrong frame
count is corrected instead) and ``summary.json``.

Exit code: 0 no problem, 1 problems found (the cleaned list leaves them out), 2 usage
error or unreadable list. docs/data-tools.md describes the tool.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["main", "check_list", "read_class_names", "KINDS", "CheckResult", "Problem"]

#: problem kinds, in report order
from tdsk.cli._workers import (UsageError, _guess_template, default_workers, parallel_map,  # noqa: F401
                             progress_bar, read_class_names, template_matcher)

KINDS = ("missing", "truncated", "undecodable", "frame_count", "short", "label", "duplicate")

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _scan_frame_folder(folder: str, template: str) -> Tuple[int, List[int], List[str]]:
    """``(highest frame number, missing numbers in 1..highest, file names)``."""
    names = os.listdir(folder)
    number = template_matcher(template)
    found = {n for n in map(number, names) if n is not None and n >= 1}
    highest = max(found, default=0)
    missing = [i for i in range(1, highest + 1) if i not in found]
    return highest, missing, names


def _entry_indices(n: int, num_segments: int, num_local: int, dataset: str) -> List[int]:
    from tdsk.data.sampling import sample_indices

    idx = sample_indices(n, num_segments, num_local, "val", dataset=dataset)
    return sorted(set(int(i) for i in np.asarray(idx).reshape(-1)) | {n - 1})


def check_entry(task: Dict[str, Any]) -> Dict[str, Any]:
    """Check one list entry; never raises. ``task``: path, is_frames, list_frames, template,
    num_segments, num_local, dataset, decode (False: index only). Returns ``problems``
    [(kind, reason)], ``num_frames`` (the real count or None), ``seconds`` (videos),
    ``size`` (H, W)."""
    out: Dict[str, Any] = {"problems": [], "num_frames": None, "seconds": None, "size": None}
    try:
        _check_entry(task, out)
    except Exception as exc:  # a bug or an unexpected decoder error: report, do not stop
        out["problems"].append(("undecodable", f"check failed ({type(exc).__name__}: {exc})"))
    return out


def _check_entry(task: Dict[str, Any], out: Dict[str, Any]) -> None:
    from tdsk.data.decoders import DecodeError, PyAVVideo, read_jpeg_frames

    path, template = task["path"], task["template"]
    problems = out["problems"]
    if not os.path.exists(path):
        problems.append(("missing", "frame folder not found" if task["is_frames"] else "file not found"))
        return
    if task["is_frames"]:
        if not os.path.isdir(path):
            problems.append(("undecodable", "is a file, not a frame folder (3-column entries are JPEG frame "
                                            "folders; list video files as <path> <label>)"))
            return
        n, missing, names = _scan_frame_folder(path, template)
        if n == 0:
            guess = _guess_template(names)
            hint = f"; the folder holds e.g. files named like {guess!r}: pass --template {guess!r}" if guess else (
                "; the folder is empty" if not names else "")
            problems.append(("undecodable", f"no frame files matching template {template!r}{hint}"))
            return
        if missing:
            problems.append(("undecodable", f"frame file {template.format(missing[0])} not found "
                                            f"({len(missing)} of frames 1..{n} missing)"))
            return
        listed = task["list_frames"]
        if listed != n:
            problems.append(("frame_count", f"the list gives {listed} frames, the folder has {n}"))
        out["num_frames"] = n
        if task.get("decode", True):
            try:
                frames = read_jpeg_frames(path, _entry_indices(n, task["num_segments"], task["num_local"],
                                                               task["dataset"]), template)
            except DecodeError as exc:
                problems.append(("undecodable", f"{exc.reason} ({os.path.basename(exc.path)})"
                                 if exc.path != path else exc.reason))
                return
            out["size"] = tuple(int(s) for s in frames.shape[1:3])
    else:
        try:
            with PyAVVideo(path, threads=1) as video:
                n = video.num_frames
                out["num_frames"] = n
                rate = getattr(video.stream, "average_rate", None) or getattr(video.stream, "guessed_rate", None)
                if rate:
                    out["seconds"] = n / float(rate)
                if task.get("decode", True):
                    frames = video.get_frames(_entry_indices(n, task["num_segments"], task["num_local"],
                                                             task["dataset"]))
                    out["size"] = tuple(int(s) for s in frames.shape[1:3])
        except DecodeError as exc:
            problems.append((_classify(exc.reason), exc.reason))
            return
    if n < task["num_segments"]:
        problems.append(("short", f"{n} frames, fewer than the {task['num_segments']} segments of the model "
                                  "window (frames would repeat)"))


def _classify(reason: str) -> str:
    """The problem kind of a video's DecodeError reason (tdsk.data.decoders' wording)."""
    if reason.startswith("file not found"):
        return "missing"
    if reason.startswith("truncated") or reason.startswith("stream ended before frame"):
        return "truncated"
    return "undecodable"


def _crashed(task: Dict[str, Any], why: str) -> Dict[str, Any]:
    return {"problems": [("undecodable", why)], "num_frames": None, "seconds": None, "size": None}


# -- the whole list ----------------------------------------------------------------------------

class Problem(tuple):
    """``(kind, line, path, reason, action)``; action: removed | fixed."""

    __slots__ = ()

    def __new__(cls, kind: str, line: int, path: str, reason: str, action: str = "removed"):
        return super().__new__(cls, (kind, line, path, reason, action))

    kind = property(lambda self: self[0])
    line = property(lambda self: self[1])
    path = property(lambda self: self[2])
    reason = property(lambda self: self[3])
    action = property(lambda self: self[4])


class CheckResult:
    """What :func:`check_list` found: ``records``, ``problems`` (sorted by kind, line),
    ``kept`` (line -> the cleaned-list text), per-entry ``info``, ``num_classes``."""

    def __init__(self, records, problems, kept, info, num_classes, class_names, seconds):
        self.records = records
        self.problems: List[Problem] = problems
        self.kept: Dict[int, str] = kept
        self.info: Dict[int, Dict[str, Any]] = info
        self.num_classes: Optional[int] = num_classes
        self.class_names: Optional[List[str]] = class_names
        self.seconds = seconds

    @property
    def removed_lines(self) -> set:
        return {p.line for p in self.problems if p.action == "removed"}

    def by_kind(self) -> Dict[str, List[Problem]]:
        out: Dict[str, List[Problem]] = {k: [] for k in KINDS}
        for p in self.problems:
            out[p.kind].append(p)
        return out


def _list_lines(list_file: str) -> List[str]:
    """The list's lines as :func:`parse_list` numbers them (1-based; BOM dropped)."""
    with open(list_file, "rb") as handle:
        data = handle.read()
    lines = []
    for raw in data.splitlines():
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        lines.append(raw.decode("utf-8", errors="replace").strip())
    return lines


def check_list(list_file: str, root: str = "", fmt: str = "auto", template: str = "{:05d}.jpg",
               num_segments: int = 8, num_local: int = 5, dataset: str = "sth",
               num_classes: Optional[int] = None, class_names: Optional[List[str]] = None,
               workers: int = 1, progress: bool = False, decode: bool = True) -> CheckResult:
    """Check every entry of ``list_file`` (see the module docstring). Raises
    :class:`UsageError` for a missing / unparsable list or bad arguments."""
    from tdsk.data.lists import ListFormatError, parse_list

    if num_segments < 1 or num_local < 1:
        raise UsageError("--num-segments and --num-local must be >= 1")
    template_matcher(template)  # validates
    try:
        records = parse_list(list_file, root=root, fmt=fmt)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ListFormatError as exc:
        raise UsageError(f"the list does not parse (fix these lines first):\n{exc}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the list {list_file}: {exc}") from None
    if not records:
        raise UsageError(f"the list {list_file} has no entries")
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    lines = _list_lines(list_file)
    t0 = time.perf_counter()

    problems: List[Problem] = []
    first_seen: Dict[str, Any] = {}
    tasks, task_records = [], []
    for rec in records:
        if num_classes is not None and rec.label >= num_classes:
            problems.append(Problem("label", rec.line, rec.path,
                                    f"label {rec.label} is out of range 0..{num_classes - 1}"))
        key = os.path.normcase(os.path.normpath(os.path.abspath(rec.path)))
        if key in first_seen:
            first = first_seen[key]
            same = "" if first.label == rec.label else f" with a different label ({first.label} there, {rec.label} here)"
            problems.append(Problem("duplicate", rec.line, rec.path, f"same path as line {first.line}{same}"))
            continue
        first_seen[key] = rec
        tasks.append({"path": rec.path, "is_frames": rec.is_frames, "list_frames": rec.num_frames,
                      "template": template, "num_segments": int(num_segments), "num_local": int(num_local),
                      "dataset": dataset, "decode": bool(decode)})
        task_records.append(rec)

    info: Dict[int, Dict[str, Any]] = {}
    bar = progress_bar(len(tasks), "check", progress)
    try:
        for i, result in parallel_map(check_entry, tasks, workers, _crashed, bar):
            rec = task_records[i]
            info[rec.line] = result
            for kind, reason in result["problems"]:
                action = "fixed" if kind == "frame_count" else "removed"
                problems.append(Problem(kind, rec.line, rec.path, reason, action))
    finally:
        bar.close()

    order = {k: i for i, k in enumerate(KINDS)}
    problems.sort(key=lambda p: (order[p.kind], p.line))
    removed = {p.line for p in problems if p.action == "removed"}
    kept: Dict[int, str] = {}
    for rec in records:
        if rec.line in removed:
            continue
        text = lines[rec.line - 1]
        real = info.get(rec.line, {}).get("num_frames")
        if rec.is_frames and real is not None and real != rec.num_frames:
            text = f"{text.rsplit(None, 2)[0]} {real} {rec.label}"  # corrected frame count
        kept[rec.line] = text
    return CheckResult(records, problems, kept, info, num_classes, class_names, time.perf_counter() - t0)


# -- reporting ---------------------------------------------------------------------------------

def _percentiles(values: Sequence[float]) -> Optional[Dict[str, float]]:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    q = np.percentile(arr, [0, 5, 25, 50, 75, 95, 100])
    return dict(zip(("min", "p5", "p25", "median", "p75", "p95", "max"), (float(v) for v in q)))


def _fmt_percentiles(p: Dict[str, float], digits: int) -> str:
    return ", ".join(f"{k} {v:.{digits}f}" for k, v in p.items())


def _class_counts(result: CheckResult) -> Tuple[int, List[int], List[int]]:
    """``(classes, kept per class, removed per class)``; out-of-range labels are not counted."""
    removed = result.removed_lines
    k = result.num_classes if result.num_classes is not None else (
        max((r.label for r in result.records), default=-1) + 1)
    kept, dropped = [0] * k, [0] * k
    for rec in result.records:
        if rec.label < k:
            (dropped if rec.line in removed else kept)[rec.label] += 1
    return k, kept, dropped


def _class_name(result: CheckResult, i: int) -> str:
    names = result.class_names
    return names[i] if names and i < len(names) else str(i)


def plot_histogram(result: CheckResult, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, kept, dropped = _class_counts(result)
    width = float(min(40.0, max(6.0, 0.12 * k)))
    fig, ax = plt.subplots(figsize=(width, 4.0))
    x = np.arange(k)
    ax.bar(x, kept, width=0.85, color="#4c72b0", label="kept")
    if any(dropped):
        ax.bar(x, dropped, width=0.85, bottom=kept, color="#c44e52", label="removed")
        ax.legend()
    ax.set_xlabel("class")
    ax.set_ylabel("videos")
    ax.set_title(title)
    ax.set_xlim(-0.75, k - 0.25)
    if k <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([_class_name(result, i) for i in range(k)], rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def output_paths(list_file: str, out_dir: str) -> Dict[str, str]:
    """The report files of a check of ``list_file`` in ``out_dir``."""
    stem, ext = os.path.splitext(os.path.basename(os.path.normpath(list_file)))
    return {"problems": os.path.join(out_dir, "problems.csv"),
            "classes_csv": os.path.join(out_dir, "classes.csv"),
            "histogram": os.path.join(out_dir, "classes.png"),
            "clean_list": os.path.join(out_dir, f"{stem}.clean{ext or '.txt'}"),
            "summary": os.path.join(out_dir, "summary.json")}


def check_outputs(list_file: str, out_dir: str, inputs: Dict[str, Optional[str]], overwrite: bool = False) -> None:
    """The report never replaces an input or a file tdsk did not write (docs/data-tools.md,
    "What the tools write"); raises :class:`UsageError`."""
    from tdsk._paths import PathCollisionError, check_distinct, check_replaceable

    paths = output_paths(list_file, out_dir)
    try:
        check_distinct(paths, inputs)
        for name, path in paths.items():
            check_replaceable(path, f"the report's {name} file", overwrite)
    except (PathCollisionError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None


def write_outputs(result: CheckResult, list_file: str, out_dir: str) -> Dict[str, str]:
    from tdsk import _io
    from tdsk._paths import record_written

    os.makedirs(out_dir, exist_ok=True)
    paths = output_paths(list_file, out_dir)
    _io.write_csv(paths["problems"], result.problems, header=["kind", "line", "path", "reason", "action"])
    k, kept, dropped = _class_counts(result)
    _io.write_csv(paths["classes_csv"], [[i, _class_name(result, i), kept[i], dropped[i]] for i in range(k)],
                  header=["label", "name", "videos", "removed"])
    _io.write_text(paths["clean_list"], "".join(result.kept[line] + "\n" for line in sorted(result.kept)))
    plot_histogram(result, paths["histogram"],
                   f"videos per class: {os.path.basename(os.path.normpath(list_file))} ({len(result.kept)} kept, "
                   f"{len(result.records) - len(result.kept)} removed)")
    record_written(out_dir, [os.path.basename(p) for n, p in paths.items() if n != "summary"], "data.check")
    return paths


def _summary(result: CheckResult, list_file: str, exit_code: int, paths: Dict[str, str]) -> Dict[str, Any]:
    k, kept, dropped = _class_counts(result)
    frames = [v["num_frames"] for ln, v in result.info.items() if v["num_frames"] is not None and ln in result.kept]
    seconds = [v["seconds"] for ln, v in result.info.items() if v["seconds"] is not None and ln in result.kept]
    sizes = Counter(f"{v['size'][1]}x{v['size'][0]}" for ln, v in result.info.items()
                    if v["size"] is not None and ln in result.kept)
    return {
        "list": os.path.abspath(list_file), "entries": len(result.records), "kept": len(result.kept),
        "removed": len(result.records) - len(result.kept),
        "problems": {kind: len(v) for kind, v in result.by_kind().items()},
        "num_classes": result.num_classes, "classes_seen": k,
        "empty_classes": [i for i in range(k) if kept[i] == 0],
        "videos_per_class": kept, "frames": _percentiles(frames), "seconds": _percentiles(seconds),
        "frame_sizes": dict(sizes.most_common(10)), "check_seconds": round(result.seconds, 3),
        "exit_code": exit_code, "outputs": paths,
    }


def print_report(result: CheckResult, summary: Dict[str, Any], list_file: str, max_shown: int = 10,
                 stream=None) -> None:
    stream = stream or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream)

    rate = len(result.info) / result.seconds if result.seconds > 0 else 0.0
    say(f"checked {summary['entries']} entries of {list_file} in {result.seconds:.1f} s ({rate:.1f} videos/s)")
    by_kind = result.by_kind()
    if result.problems:
        say(f"problems: {len(result.problems)} ("
            + ", ".join(f"{kind} {len(v)}" for kind, v in by_kind.items() if v) + ")")
        for kind, items in by_kind.items():
            if not items:
                continue
            say(f"  {kind} ({len(items)}):")
            for p in items[:max_shown]:
                note = " [fixed in the cleaned list]" if p.action == "fixed" else ""
                say(f"    line {p.line}: {p.path}: {p.reason}{note}")
            if len(items) > max_shown:
                say(f"    ... and {len(items) - max_shown} more (problems.csv)")
        if by_kind["missing"] and len(by_kind["missing"]) == len(result.records):
            say("  every entry is missing: are the list's paths relative to --root?")
    else:
        say("problems: none")
    k, kept, _ = _class_counts(result)
    counts = np.asarray(kept)
    source = "" if result.num_classes is not None else " (labels not checked: give --labels or --num-classes)"
    say(f"classes: {k}{source}; videos per class: min {counts.min()}, median {float(np.median(counts)):.0f}, "
        f"max {counts.max()}")
    if summary["empty_classes"]:
        shown = ", ".join(_class_name(result, i) for i in summary["empty_classes"][:20])
        more = " ..." if len(summary["empty_classes"]) > 20 else ""
        say(f"  classes with no video: {len(summary['empty_classes'])} ({shown}{more})")
    order = sorted(range(k), key=lambda i: (kept[i], i))
    rows = list(range(k)) if k <= 30 else order[:5] + order[-5:]
    if k > 30:
        say("  fewest and most videos (all in classes.csv):")
    for i in rows:
        say(f"    {i:>4} {_class_name(result, i)[:40]:<40} {kept[i]:>7}")
    if summary["frames"]:
        say(f"frames per entry: {_fmt_percentiles(summary['frames'], 0)}")
    if summary["seconds"]:
        say(f"duration of the videos (s): {_fmt_percentiles(summary['seconds'], 2)}")
    if summary["frame_sizes"]:
        say("frame sizes (WxH): " + ", ".join(f"{s} ({c})" for s, c in list(summary["frame_sizes"].items())[:5]))
    outputs = summary["outputs"]
    say(f"wrote {outputs['problems']}, {outputs['histogram']}, {outputs['classes_csv']}, {outputs['summary']}")
    say(f"cleaned list: {outputs['clean_list']} ({summary['kept']} of {summary['entries']} entries)")
    if summary["exit_code"] == EXIT_OK:
        say("dataset is usable as is (exit 0)")
    elif summary["kept"] == 0:
        say("no usable entry is left (exit 1)")
    else:
        say("problems found; train on the cleaned list (exit 1)")


# -- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from tdsk.data import DataConfig

    d = DataConfig()
    p = argparse.ArgumentParser(
        prog="python -m tdsk.data.check",
        description="Check an annotation list before training: open and decode every entry, report "
                    "missing / truncated / undecodable files, frame-count disagreements, videos shorter "
                    "than the model window, labels out of range and duplicates; write a problem CSV, a "
                    "class histogram and a cleaned list. Exit 0: usable; 1: problems (left out of the "
                    "cleaned list); 2: usage error or unreadable list.")
    p.add_argument("list", help="annotation list: <path> <label> (videos) or <dir> <num_frames> <label> (frames); "
                                "or a folder of <class>/<video> (data.layout=folders)")
    p.add_argument("--root", default=d.root, help="directory the list's paths are relative to (data.root; "
                                                  "default: the current directory)")
    p.add_argument("--labels", help="class names: labels.txt (one per line), an index,name CSV, or a JSON "
                                    "list / {name: index} mapping; labels are checked against their count")
    p.add_argument("--num-classes", type=int, help="labels must be 0..N-1 (instead of, or as well as, --labels)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="worker processes (default: min(8, CPUs)); 0 or 1: in this process")
    p.add_argument("--num-segments", type=int, default=d.num_segments, help="T, the model's segments (default 8)")
    p.add_argument("--num-local", type=int, default=d.num_local, help="M, local frames per segment (default 5)")
    p.add_argument("--dataset", choices=("sth", "kinetics"), default=d.dataset,
                   help="sampling rules for the decoded frames (default sth)")
    p.add_argument("--format", choices=("auto", "frames", "video"), default=d.format, help="list format")
    p.add_argument("--template", default=d.template,
                   help="frame file names in the folders, numbered from 1 (default {:05d}.jpg; SSv2: img_{:05d}.jpg)")
    p.add_argument("--index-only", action="store_true",
                   help="open and index every entry (frame counts, truncation) without decoding frames: "
                        "faster, but a corrupt payload or JPEG goes unnoticed")
    p.add_argument("--out", help="output folder (default: <list>.check/ next to the list)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace report files in --out that tdsk did not write (never the list itself)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _folder_list(folder: str, names: Optional[List[str]], out_dir: str) -> Tuple[str, List[str]]:
    """A ``<path> <label>`` list of ``folder/<class>/<video>`` (classes numbered as training numbers
    them: ``--labels`` order, else sorted folder names), written into the report folder."""
    from tdsk import _io
    from tdsk.config import ConfigError
    from tdsk.data.custom import scan_class_folders

    try:
        classes = scan_class_folders(folder)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("data.layout=folders: ", "")) from None
    order = list(names) if names else sorted(classes)
    unknown = [c for c in classes if c not in order]
    if unknown:
        raise UsageError(f"class folders not in --labels: {', '.join(unknown[:10])}")
    index = {c: i for i, c in enumerate(order)}
    lines = [f"{path} {index[c]}\n" for c in sorted(classes) for path in classes[c]]
    if not lines:
        raise UsageError(f"{folder}: no videos in its class folders")
    from tdsk._paths import check_replaceable, record_written

    path = os.path.join(out_dir, "folder-list.txt")
    try:
        check_replaceable(path, "the derived list")
    except FileExistsError as exc:
        raise UsageError(str(exc)) from None
    _io.write_text(path, "".join(lines))
    record_written(out_dir, ["folder-list.txt"], "data.check")
    return path, order


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    args = build_parser().parse_args(argv)
    try:
        names = read_class_names(args.labels) if args.labels else None
        if args.labels and not names:
            raise UsageError(f"the labels file {args.labels} holds no class name")
        if args.num_classes is not None:
            if args.num_classes < 1:
                raise UsageError("--num-classes must be >= 1")
            if names is not None and len(names) != args.num_classes:
                raise UsageError(f"--num-classes {args.num_classes} disagrees with the {len(names)} names "
                                 f"in {args.labels}")
        if args.root and not os.path.isdir(args.root):
            raise UsageError(f"--root {args.root}: no such directory")
        out_dir = args.out or f"{os.path.normpath(args.list)}.check"
        check_outputs(args.list, out_dir, {"the list": args.list, "--labels": args.labels}, args.overwrite)
        list_file = args.list
        if os.path.isdir(args.list):  # data.layout=folders: <list>/<class>/<video>, as training reads it
            list_file, derived = _folder_list(args.list, names, out_dir)
            names = names or derived
        result = check_list(list_file, root=args.root, fmt=args.format, template=args.template,
                            num_segments=args.num_segments, num_local=args.num_local, dataset=args.dataset,
                            num_classes=args.num_classes, class_names=names, workers=args.workers,
                            progress=not args.no_progress, decode=not args.index_only)
        try:
            paths = write_outputs(result, args.list, out_dir)
        except OSError as exc:
            raise UsageError(f"cannot write the report to {out_dir}: {exc}") from None
    except UsageError as exc:
        print(f"tdsk.data.check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tdsk.data.check: interrupted", file=sys.stderr)
        return 130
    code = EXIT_PROBLEMS if result.problems else EXIT_OK
    summary = _summary(result, args.list, code, paths)
    from tdsk import _io
    from tdsk._paths import record_written

    _io.write_json(paths["summary"], summary)
    record_written(os.path.dirname(os.path.abspath(paths["summary"])), ["summary.json"], "data.check")
    try:
        print_report(result, summary, args.list)
    except BrokenPipeError:  # `... | head`: the report files are written, the code stands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
