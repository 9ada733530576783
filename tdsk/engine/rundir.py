"""The run directory: one run at a time, resume from the newest readable checkpoint,
never delete what this run line did not write.

A run directory holds ``epoch_NNNN.pt`` (``NNNN`` epochs done), mid-epoch
``epoch_NNNN_iter_IIIIII.pt`` (``IIIIII`` iterations into the next epoch, written every
``output.checkpoint_every`` iterations and on SIGINT/SIGTERM), ``best.pt``,
``metrics.jsonl`` (append-only), ``config.yaml``, ``checkpoints.json`` (the manifest:
which checkpoints this run line wrote) and ``.tdsk-run.lock``.

* **Lock**: the training process (rank 0 under torchrun) holds an exclusive
  ``flock`` on ``.tdsk-run.lock`` for the whole run; a second run into the same
  directory stops at once naming the holder (host, PID). The kernel releases the lock
  when a process dies, even on SIGKILL, so a lock left by a dead process is taken
  over (with a warning naming it).
* **Resume**: :func:`find_resume` loads candidates newest first and returns the first
  readable one (loaded once), naming each skipped file and why. If checkpoints exist
  and none is readable it raises: a fresh start needs an explicit ``--overwrite``.
* **Pruning** deletes only checkpoints listed in the manifest of the current run line
  (the run and the runs it resumed from), never the newest one.
* **Temporary files** left by a write that was killed (``.<name>.tmp<pid>``, ``.<name>.XXXXXXXX.tmp``) are
  removed when the next run takes the lock.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import time
import uuid
from typing import Any, List, Optional, Tuple

from tdsk._logging import logger
from tdsk.engine import checkpoint as C

__all__ = ["RunDirError", "RunLock", "checkpoint_files", "checkpoint_name", "find_resume", "Manifest",
           "remove_stale_temporaries", "new_run_id"]

LOCK_NAME = ".tdsk-run.lock"
MANIFEST_NAME = "checkpoints.json"
_CKPT_RE = re.compile(r"^epoch_(\d{4,})(?:_iter_(\d{6,}))?\.pt$")
_TMP_RE = re.compile(r"^\.(epoch_\d+(?:_iter_\d+)?\.pt|best\.pt|checkpoints\.json|config\.yaml|metrics\.jsonl)"
                     r"(?:\.tmp\d+|\.[a-z0-9_]{8}\.tmp)$")  # checkpoint writer's / tdsk._io's temp names


class RunDirError(FileExistsError):
    """The run directory cannot be used as asked (in use, unreadable checkpoints, ...)."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------- names

def checkpoint_name(epochs_done: int, iteration: int = 0) -> str:
    """``epoch_0003.pt`` at an epoch boundary, ``epoch_0003_iter_000150.pt`` inside epoch 4."""
    if iteration:
        return f"epoch_{epochs_done:04d}_iter_{iteration:06d}.pt"
    return C.EPOCH_PATTERN.format(epochs_done)


def checkpoint_files(directory: str) -> List[Tuple[Tuple[int, int], str]]:
    """``[((epochs_done, iteration), path), ...]`` of the training checkpoints, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _CKPT_RE.match(name)
        if m:
            found.append(((int(m.group(1)), int(m.group(2) or 0)), os.path.join(directory, name)))
    return sorted(found)


# ----------------------------------------------------------------------------- lock

class RunLock:
    """An exclusive, process-lifetime lock on a run directory (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: Optional[int] = None

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        import fcntl

        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)  # a filesystem without locks: say so, do not block the run
                logger.warning(f"cannot lock {self.path} ({exc}); two runs in {self.directory} would not be detected")
                return self
            os.close(fd)
            h = self._holder()
            who = f"host {h.get('host', '?')}, PID {h.get('pid', '?')}, started {h.get('started', '?')}"
            raise RunDirError(f"{self.directory} is in use by another training run ({who}). Wait for it to end, "
                              "stop it, or choose another output directory (--output / output.dir=...)") from None
        previous = self._holder()
        if previous:
            logger.warning(f"taking over the lock of {self.directory} left by a process that is gone "
                           f"(host {previous.get('host', '?')}, PID {previous.get('pid', '?')})")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file and unlock (the file stays: unlinking it would let two runs lock two inodes)."""
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(directory: str) -> List[str]:
    """Delete ``.<name>.tmp<pid>`` files a killed write left (call with the lock held)."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if _TMP_RE.match(name):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(sorted(removed))}")
    return removed


# ----------------------------------------------------------------------------- resume

def find_resume(directory: str) -> Tuple[Optional[str], Optional[dict], List[Tuple[str, str]]]:
    """``(path, checkpoint, skipped)``: the newest readable training checkpoint, loaded once.

    ``skipped`` lists ``(path, reason)`` of the newer files that could not be used (each is
    also logged). Raises :class:`RunDirError` when checkpoints exist but none is readable.
    ``(None, None, [])`` when the directory has no checkpoint at all.
    """
    candidates = checkpoint_files(directory)
    skipped: List[Tuple[str, str]] = []
    for _, path in reversed(candidates):
        try:
            ckpt = C.load(path)
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt, not a torch file
            reason = str(exc).split(": ", 1)[-1] if str(exc).startswith("cannot read checkpoint") else str(exc)
            skipped.append((path, f"unreadable ({reason[:200]})"))
            logger.warning(f"--resume auto: skipping {path}: unreadable ({reason[:200]})")
            continue
        if not C.is_training_checkpoint(ckpt):
            skipped.append((path, "not a tdsk training checkpoint"))
            logger.warning(f"--resume auto: skipping {path}: not a tdsk training checkpoint")
            continue
        return path, ckpt, skipped
    if candidates:
        listed = "\n  ".join(f"{p}: {r}" for p, r in skipped)
        raise RunDirError(f"--resume auto: {directory} holds {len(candidates)} checkpoint(s) but none is readable:\n  "
                          f"{listed}\nNothing was changed. Start a fresh run there with --overwrite (it deletes "
                          "them), or choose another output directory.")
    return None, None, []


# ----------------------------------------------------------------------------- manifest

class Manifest:
    """``checkpoints.json``: the run line's id and the checkpoint files it wrote."""

    def __init__(self, directory: str, run_id: str):
        self.path = os.path.join(directory, MANIFEST_NAME)
        self.run_id = run_id
        self.files: List[str] = []
        data = self._read()
        if data.get("run_id") == run_id:
            self.files = [f for f in data.get("files", []) if isinstance(f, str)]

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self) -> None:
        from tdsk import _io

        _io.write_json(self.path, {"run_id": self.run_id, "files": self.files})

    def add(self, path: str) -> None:
        name = os.path.basename(path)
        if name not in self.files:
            self.files.append(name)
        self._write()

    def prune(self, keep_last: int, newest: str) -> List[str]:
        """Delete this run line's older checkpoints: mid-epoch ones older than ``newest``, and
        epoch ones beyond the newest ``keep_last`` (0 = keep all). Never ``newest``."""
        directory = os.path.dirname(self.path)
        ours = {os.path.join(directory, n) for n in self.files}
        files = [(key, p) for key, p in checkpoint_files(directory) if p in ours]
        newest = os.path.join(directory, os.path.basename(newest))
        epoch_files = [p for key, p in files if key[1] == 0]
        doomed = [p for key, p in files if key[1] != 0 and p != newest]
        if keep_last > 0:
            doomed += [p for p in epoch_files[:-keep_last] if p != newest]
        removed = []
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
        if removed:
            self.files = [n for n in self.files if os.path.join(directory, n) not in removed]
            self._write()
        return removed


def describe(items: List[Tuple[Any, str]]) -> str:
    return ", ".join(os.path.basename(p) for _, p in items)
