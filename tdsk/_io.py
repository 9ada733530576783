"""Atomic file writes: one home for "write a temp file next to the target, fsync, replace".

A reader never sees a half-written file, and a failed or interrupted write leaves the
old file (if any) as it was and no temp file behind. Every writer of a result that a
user keeps (checkpoints, lists, reports, markers) goes through here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "write_csv", "fsync_dir", "plain"]


def fsync_dir(path: str) -> None:
    """Flush a directory entry (a rename into it) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, mode: int = 0o644, keep_name: bool = False) -> Iterator[str]:
    """Yield a temp path in ``path``'s folder; on success it replaces ``path`` (fsynced),
    on any exception (KeyboardInterrupt included) it is removed and ``path`` is untouched.

    For writers that need a file name (``torch.save``, ``safetensors``, ``savefig``).
    ``keep_name``: the temp file has ``path``'s own name, in a hidden folder next to it (for
    writers that name side files after it, such as ONNX external data)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    if keep_name:
        hidden = tempfile.mkdtemp(prefix=f".{base}.", dir=folder)
        try:
            yield os.path.join(hidden, base)
            os.replace(os.path.join(hidden, base), path)
        finally:
            import shutil

            shutil.rmtree(hidden, ignore_errors=True)
        fsync_dir(folder)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def write_text(path: str, text: str) -> str:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any, indent: int = 1, **kw) -> str:
    """Write ``obj`` as JSON (no NaN/inf: ``allow_nan=False``, a trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False, **kw) + "\n")


def write_csv(path: str, rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Write CSV ``rows`` (after an optional ``header``) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def plain(obj: Any, finite_only: bool = False) -> Any:
    """The one plain-value converter: mappings (string keys), lists and scalars, numpy/torch
    values through ``tolist()``, anything else as ``str`` -- what JSON, YAML and a
    ``weights_only`` checkpoint accept. ``finite_only``: NaN/inf become ``None`` (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v, finite_only) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, finite_only) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return None if finite_only and not math.isfinite(obj) else obj
    if hasattr(obj, "tolist") and not isinstance(obj, bytes):
        return plain(obj.tolist(), finite_only)
    return str(obj)
