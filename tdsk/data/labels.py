"""Class names of a dataset: the one reader every tool and the library use (``data.labels``,
``--labels``, a model folder's ``labels.txt``, ``tdsk.Recognizer(labels=...)``).

The form follows the file's extension, never a guess from its content:

* ``.json``: a list of names, or a ``{name: index}`` mapping (Something-Something V2's
  ``labels.json``, indices as numbers or strings);
* ``.csv`` / ``.tsv``: ``index,name`` (``index<TAB>name``) rows, in any order, an optional
  header row (``label,name``); a name may contain the separator (split at the first one);
* anything else (``labels.txt``): one name per line, in class-index order, taken as it is
  (surrounding whitespace stripped): ``3 point up`` is a class called "3 point up".

Refused, naming the file and line: non-UTF-8 text, an empty name in the middle of a text
file (it would shift every later class), a duplicated index or name, gaps in the indices,
an empty file, and a text file whose lines are all ``index name`` rows out of order (the
old tdsk form: read as names it would permute the classes; write it as ``.csv``). A count
that does not match the model is an error naming both counts (:func:`labels_for_model`).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Union

from tdsk.data.lists import ListFormatError

logger = logging.getLogger(__name__)

__all__ = ["read_labels", "labels_for_model", "check_names"]

_INDEXED = re.compile(r"^(\d+)[ \t,]+(\S.*)$")


def read_labels(path: Union[str, os.PathLike]) -> List[str]:
    """Class names in index order (see the module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file {path} not found") from None
    except IsADirectoryError:
        raise ListFormatError(f"labels file {path} is a folder") from None
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        names = _read_json(path, data)
    else:
        rows = _lines(path, data)
        names = _read_table(path, rows, "\t" if ext == ".tsv" else ",") if ext in (".csv", ".tsv") \
            else _read_text(path, rows)
    check_names(names, path)
    return names


def check_names(names: Sequence[str], source: str) -> None:
    """Refuse empty, blank or duplicated class names (``source`` names where they came from)."""
    if not names:
        raise ListFormatError(f"{source}: no class names")
    seen: Dict[str, int] = {}
    for i, name in enumerate(names):
        if not str(name).strip():
            raise ListFormatError(f"{source}: class {i} has an empty name")
        if name in seen:
            raise ListFormatError(f"{source}: classes {seen[name]} and {i} are both named {name!r}")
        seen[name] = i


def labels_for_model(labels: Union[None, str, os.PathLike, Sequence[str]], num_classes: Optional[int],
                     what: str = "labels") -> Optional[List[str]]:
    """Class names from a file or a list, checked against a model of ``num_classes`` classes
    (``ValueError`` naming both counts; ``what`` names the argument, e.g. ``--labels x.txt``)."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        names = read_labels(labels)
    else:
        names = [str(x) for x in labels]
        check_names(names, what)
    if num_classes and len(names) != int(num_classes):
        raise ValueError(f"{what}: {len(names)} class names for a model of {int(num_classes)} classes")
    return names


def _lines(path: str, data: bytes) -> List[tuple]:
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ListFormatError(f"{path}:{n}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        rows.append((n, text.lstrip("\ufeff").strip() if n == 1 else text.strip()))
    while rows and not rows[-1][1]:
        rows.pop()  # trailing blank lines
    if not rows:
        raise ListFormatError(f"{path}: no class names (one per line; .csv: index,name; .json: list or mapping)")
    return rows


def _read_text(path: str, rows: List[tuple]) -> List[str]:
    for n, text in rows:
        if not text:
            raise ListFormatError(f"{path}:{n}: empty line: a labels .txt is one name per line in class order, "
                                  "and an empty one would shift every later class")
    matches = [_INDEXED.match(text) for _, text in rows]
    if len(rows) > 1 and all(matches):
        indices = [int(m.group(1)) for m in matches]
        if sorted(indices) in (list(range(len(rows))), list(range(1, len(rows) + 1))) and \
                indices != sorted(indices):
            raise ListFormatError(f"{path}: every line is an 'index name' row and the indices are not in line "
                                  "order; a .txt labels file is one name per line (in class order): save "
                                  "index,name rows as a .csv file instead")
        if sorted(indices) == list(range(len(rows))):
            logger.warning(f"{path}: every line starts with its class index; the names are taken as written "
                           f"({rows[0][1]!r}); for index,name rows use a .csv file")
    return [text for _, text in rows]


def _read_table(path: str, rows: List[tuple], sep: str) -> List[str]:
    names: Dict[int, str] = {}
    for i, (n, text) in enumerate(rows):
        if not text:
            continue
        head, found, tail = text.partition(sep)
        head = head.strip()
        if not (found and head.isascii() and head.isdigit()):
            if i == 0:
                continue  # a header row (label,name)
            raise ListFormatError(f"{path}:{n}: expected index{sep}name, got {text!r}")
        index, name = int(head), tail.strip().strip('"').strip()
        if index in names:
            raise ListFormatError(f"{path}:{n}: class index {index} given twice")
        names[index] = name
    if not names:
        raise ListFormatError(f"{path}: no index{sep}name rows")
    missing = [k for k in range(max(names) + 1) if k not in names]
    if missing:
        raise ListFormatError(f"{path}: no name for class index(es) {missing[:10]} (indices must be 0..K-1)")
    return [names[k] for k in range(len(names))]


def _read_json(path: str, data: bytes) -> List[str]:
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ListFormatError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(obj, list) and obj:
        if not all(isinstance(x, str) for x in obj):
            raise ListFormatError(f"{path}: a JSON list of class names must hold strings")
        return list(obj)
    if isinstance(obj, dict) and obj:
        try:
            indexed = {int(v): str(k) for k, v in obj.items()}
        except (TypeError, ValueError):
            raise ListFormatError(f"{path}: a JSON mapping must be {{name: index}}") from None
        if len(indexed) != len(obj):
            raise ListFormatError(f"{path}: two class names share an index")
        missing = [k for k in range(max(indexed) + 1) if k not in indexed]
        if missing or min(indexed) < 0:
            raise ListFormatError(f"{path}: no name for class index(es) {missing[:10]} (indices must be 0..K-1)")
        return [indexed[k] for k in range(len(indexed))]
    raise ListFormatError(f"{path}: expected a JSON list of names or a {{name: index}} mapping")
