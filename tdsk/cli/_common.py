"""What the command-line tools share (evaluate, predict, export, extract): loading a model for
inference, the errors that mean "the user can fix this", argument parsers, output checks."""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Sequence

__all__ = ["user_errors", "json_safe", "parse_views", "read_labels", "load_for_inference",
           "check_output_writable"]


def user_errors(loading: bool = False) -> tuple:
    """Exception classes that mean "the user can fix this" (bad recipe, list, data, paths).

    ``main`` reports them as one ``error: ...`` line with exit code 2 instead of a
    traceback. With ``loading=True`` also ``ValueError``/``RuntimeError``/``OSError``,
    which is what reading and matching a checkpoint raises for a wrong file.
    """
    from tdsk.config import ConfigError, DataNotFoundError
    from tdsk.data.decoders import DecodeError
    from tdsk.data.lists import ListFormatError
    from tdsk.data.loader import BadSampleError

    base = (ConfigError, DataNotFoundError, ListFormatError, BadSampleError, DecodeError, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError)
    return base + ((ValueError, RuntimeError, OSError) if loading else ())


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy/torch values as Python values, so
    ``json.dump(..., allow_nan=False)`` always writes valid JSON (:func:`tdsk._io.plain`)."""
    from tdsk._io import plain

    return plain(obj, finite_only=True)


def parse_views(text: str | None) -> tuple[int, int] | None:
    """``"3x2"`` -> (3 crops, 2 clips)."""
    if text is None:
        return None
    try:
        crops, clips = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views {text!r}: expected CROPSxCLIPS, e.g. 3x2") from None
    if crops not in (1, 3) or clips < 1:
        raise argparse.ArgumentTypeError(f"--views {text!r}: crops must be 1 or 3 and clips >= 1")
    return crops, clips


def read_labels(path: str) -> list[str]:
    """Class names in index order: :func:`tdsk.data.labels.read_labels` (the one reader)."""
    from tdsk.data.labels import read_labels as _read

    return _read(path)


def load_for_inference(checkpoint: str, cfg_name: str | None = None, overrides: Sequence[str] = (),
                       device: str = "cpu"):
    """Build the model for ``checkpoint`` (a tdsk or official checkpoint, or a model folder)
    and load its weights: :func:`tdsk.inference.load_model`.

    Returns ``(model, cfg, classes)``; ``classes`` is ``None`` unless the checkpoint
    stores them. The model is in eval mode on ``device``.
    """
    from tdsk.inference import load_model

    return load_model(checkpoint, cfg_name, overrides, device=device)


def check_output_writable(out: str) -> str:
    """Create ``out`` and try a temporary file in it; ``PermissionError``/``OSError`` with
    a clear message if results could not be written there."""
    _probe_folder(out, f"--out {out}: cannot write results there")
    return out


def _probe_folder(folder: str, message: str) -> None:
    """Create ``folder`` and a temporary file in it, or ``PermissionError(message (why))``."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tdsk-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PermissionError(f"{message} ({exc.strerror or exc})") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_writable_file(path: str, flag: str) -> str:
    """The folder of an output file must exist (it is created) and take a file; checked before the pass."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a directory, expected a file name")
    _probe_folder(folder, f"{flag} {path}: cannot write there")
    return path
