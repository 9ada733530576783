"""Annotation lists in the formats the official code and mmaction2 use.

* frame folders: ``<dir> <num_frames> <label>`` (Something-Something, JPEG frames
  numbered from 1 with a template such as ``{:05d}.jpg``);
* videos: ``<path> <label>`` (SSv2 webm, Kinetics mp4).

Paths are relative to a root. Columns are split on whitespace from the right, so a
path may itself contain spaces. Blank lines and lines starting with ``#`` are skipped.
Lists are UTF-8 (a byte-order mark is dropped; other bad bytes are ``file:line`` errors);
numbers are plain ASCII decimal (``1_000``, ``+5`` or Arabic-Indic digits are errors).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["VideoRecord", "ListFormatError", "parse_list", "FORMATS"]

FORMATS = ("auto", "frames", "video")


@dataclass(frozen=True)
class VideoRecord:
    """One list entry. ``num_frames`` is ``None`` for videos (it comes from the decoder)."""

    path: str
    label: int
    num_frames: Optional[int] = None
    line: int = 0

    @property
    def is_frames(self) -> bool:
        return self.num_frames is not None


class ListFormatError(ValueError):
    """A list file has lines that do not parse; the message names file and line numbers."""


_INT = re.compile(r"-?[0-9]+")  # [0-9] is ASCII only; int() would also take "1_000", "+5", "\u0661"
_BOM = b"\xef\xbb\xbf"


def _is_int(text: str) -> bool:
    return _INT.fullmatch(text) is not None


def parse_list(list_file: str, root: str = "", fmt: str = "auto", *, min_frames: int = 0,
               max_errors_shown: int = 20) -> List[VideoRecord]:
    """Read an annotation list into :class:`VideoRecord` s with paths joined to ``root``.

    Args:
        list_file: the list path.
        root: directory the entries are relative to (absolute entries are kept).
        fmt: ``"frames"`` (3 columns), ``"video"`` (2 columns) or ``"auto"`` (decided
            per line: an integer second-to-last column on a line of 3+ columns means frames).
        min_frames: 3-column entries with fewer frames are dropped (docs/sampling.md §1: 8 at
            train and in-training val, 0 at test).

    Raises:
        FileNotFoundError: the list itself is missing.
        ListFormatError: listing every bad line as ``file:line: reason`` (first
            ``max_errors_shown``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"list format must be one of {FORMATS}, got {fmt!r}")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"annotation list not found: {list_file}")
    records: List[VideoRecord] = []
    errors: List[str] = []
    with open(list_file, "rb") as handle:
        data = handle.read()
    # Lines as text mode splits them (\n, \r\n, \r), each decoded on its own so that a bad
    # byte is reported with its line. A byte-order mark (at the start, or mid-file where
    # lists were concatenated) is not part of a path.
    for lineno, raw_bytes in enumerate(data.splitlines(), start=1):
        if raw_bytes.startswith(_BOM):
            raw_bytes = raw_bytes[len(_BOM):]
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            hint = " (the file looks like UTF-16: save it as UTF-8)" if (
                lineno == 1 and raw_bytes[:2] in (b"\xff\xfe", b"\xfe\xff")) else ""
            errors.append(f"{list_file}:{lineno}: not valid UTF-8 (byte {raw_bytes[exc.start]:#04x} at "
                          f"column {exc.start + 1}){hint}; lists must be UTF-8 text")
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        as_frames = fmt == "frames" or (fmt == "auto" and len(parts) >= 3 and _is_int(parts[-2]))
        need = 3 if as_frames else 2
        if len(parts) < need:
            errors.append(f"{list_file}:{lineno}: expected {need} columns "
                          f"({'<dir> <num_frames> <label>' if as_frames else '<path> <label>'}), got {line!r}")
            continue
        if not _is_int(parts[-1]):
            errors.append(f"{list_file}:{lineno}: label {parts[-1]!r} is not an integer "
                          "(plain ASCII digits 0-9)")
            continue
        label = int(parts[-1])
        if label < 0:
            errors.append(f"{list_file}:{lineno}: negative label {label}")
            continue
        num_frames = None
        if as_frames:
            if not _is_int(parts[-2]):
                errors.append(f"{list_file}:{lineno}: num_frames {parts[-2]!r} is not an integer "
                              "(plain ASCII digits 0-9)")
                continue
            num_frames = int(parts[-2])
            if num_frames < 0:
                errors.append(f"{list_file}:{lineno}: negative num_frames {num_frames}")
                continue
            # Only the path may contain spaces: rejoin what is left of the columns.
            rel = line.rsplit(None, 2)[0]
        else:
            rel = line.rsplit(None, 1)[0]
        if num_frames is not None and num_frames < min_frames:
            continue
        records.append(VideoRecord(os.path.join(root, rel) if root else rel, label, num_frames, lineno))
    if errors:
        shown = "\n  ".join(errors[:max_errors_shown])
        more = f"\n  ... and {len(errors) - max_errors_shown} more" if len(errors) > max_errors_shown else ""
        raise ListFormatError(f"{len(errors)} bad line(s) in annotation list {list_file}:\n  {shown}{more}")
    return records
