"""Output paths that never lose a user's file (docs/data-tools.md, "What the tools write").

The rule every tool follows:

1. resolve all its output paths first and refuse any two that are the same file (real
   paths: symlinks and ``..`` resolved; hard links by inode), and any output that is one
   of its inputs (:func:`check_distinct`);
2. never replace a file or folder it cannot prove it wrote (:func:`check_replaceable`).
   Proof is a marker, ``.tdsk-written.json`` in the folder, that records the name, size
   and SHA-256 of each file a tdsk tool wrote there (:func:`record_written`): a file that
   was changed since, or a folder holding anything unrecorded, is the user's. ``overwrite``
   (``--overwrite``) lifts rule 2, never rule 1.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Mapping, Optional

from tdsk import _io

__all__ = ["MARKER", "PathCollisionError", "same_file", "check_distinct", "check_not_inside", "record_written",
           "written_by_tdsk", "check_replaceable"]

MARKER = ".tdsk-written.json"


class PathCollisionError(ValueError):
    """Two outputs, or an output and an input, are the same file."""


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def same_file(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same file: equal real paths, or the same inode when both exist."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(outputs: Mapping[str, Optional[str]], inputs: Optional[Mapping[str, Optional[str]]] = None) -> None:
    """Raise :class:`PathCollisionError` naming both sides when two of ``outputs`` (``{"--dump":
    path}``), or an output and one of ``inputs``, are the same file. ``None`` paths are skipped."""
    outs = [(k, v) for k, v in outputs.items() if v]
    ins = [(k, v) for k, v in (inputs or {}).items() if v]
    for i, (name, path) in enumerate(outs):
        for other, other_path in outs[i + 1:]:
            if same_file(path, other_path):
                raise PathCollisionError(f"{name} and {other} are the same file ({path}): one would be lost")
        for other, other_path in ins:
            if same_file(path, other_path):
                raise PathCollisionError(f"{name} {path} is the input {other}: writing it would destroy the input")


def check_not_inside(folder: str, name: str, inputs: Mapping[str, Optional[str]]) -> None:
    """Raise :class:`PathCollisionError` when an input lies inside the output ``folder`` (which
    the tool replaces as a whole)."""
    root = _real(folder)
    for other, path in inputs.items():
        if path and (_real(path) + os.sep).startswith(root + os.sep):
            raise PathCollisionError(f"{name} {folder} holds the input {other} ({path}): replacing the folder "
                                     "would destroy the input")


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_marker(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as fh:
            data = json.load(fh)
        return data.get("files", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_written(folder: str, names: Iterable[str], tool: str) -> None:
    """Record files ``names`` (in ``folder``) as written by ``tool`` (size and SHA-256)."""
    files = _read_marker(folder)
    for name in names:
        path = os.path.join(folder, name)
        files[name] = {"size": os.path.getsize(path), "sha256": _digest(path), "tool": tool}
    _io.write_json(os.path.join(folder, MARKER), {"written_by": "tdsk", "files": files})


def _file_proven(folder: str, name: str, files: Mapping) -> bool:
    entry = files.get(name)
    path = os.path.join(folder, name)
    if not isinstance(entry, Mapping) or not os.path.isfile(path) or os.path.islink(path):
        return False
    return os.path.getsize(path) == entry.get("size") and _digest(path) == entry.get("sha256")


def written_by_tdsk(path: str) -> bool:
    """``path`` (a file, or a folder and everything in it) is recorded in a marker and unchanged."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path) and not os.path.islink(path):
        files = _read_marker(path)
        names = [n for n in os.listdir(path) if n != MARKER]
        return bool(files) and all(_file_proven(path, n, files) for n in names)
    folder, name = os.path.split(path)
    return _file_proven(folder, name, _read_marker(folder))


def check_replaceable(path: str, what: str, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raise ``FileExistsError`` when ``path`` exists (a non-empty folder, or a file) and
    tdsk cannot prove it wrote it, unless ``overwrite``."""
    if overwrite or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        return
    if written_by_tdsk(path):
        return
    kind = "folder" if os.path.isdir(path) else "file"
    raise FileExistsError(f"{what} {path}: an existing {kind} that tdsk did not write (or that changed since); "
                          f"choose another path, or pass {flag} to replace it")
