"""Class names of a dataset: ``labels.txt`` (one name per line, in class-index order; names
may contain commas), an ``index,name`` CSV (also ``index<TAB>name`` / ``index name``; a
header row such as ``label,name`` is skipped), or a JSON list of names or ``{name: index}``
mapping (Something-Something V2's labels file), e.g. for ``data.labels``.

Errors name the file and line: a non-UTF-8 line, a duplicated index, gaps in the
indices (class ``k`` without a name) and an empty file are refused.
"""
from __future__ import annotations

from typing import Dict, List

from tdsk.data.lists import ListFormatError

__all__ = ["read_labels"]


def _split_indexed(row: str):
    for sep in (",", "\t", " "):
        head, _, tail = row.partition(sep)
        head = head.strip()
        if tail.strip() and head.isascii() and head.isdigit():
            return int(head), tail.strip().strip('"')
    return None


def read_labels(path: str) -> List[str]:
    """Class names in index order (see the module docstring)."""
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file {path} not found") from None
    if path.lower().endswith(".json"):
        return _read_json(path, b"\n".join(raw))
    rows = []
    for n, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError as exc:
            raise ListFormatError(f"{path}:{n}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if text:
            rows.append((n, text))
    if not rows:
        raise ListFormatError(f"{path}: no class names (one per line, or index,name)")
    indexed = [(n, _split_indexed(text), text) for n, text in rows]
    if len(indexed) > 2 and indexed[0][1] is None and all(i is not None for _, i, _ in indexed[1:]) and (
            "," in rows[0][1] or "\t" in rows[0][1]):
        indexed, rows = indexed[1:], rows[1:]  # a header row of a CSV
    if all(item is not None for _, item, _ in indexed) and len(rows) > 1 or (
            len(rows) == 1 and indexed[0][1] is not None and "," in rows[0][1]):
        names: Dict[int, str] = {}
        for n, (index, name), _ in indexed:
            if index in names:
                raise ListFormatError(f"{path}:{n}: class index {index} given twice")
            names[index] = name
        missing = [k for k in range(max(names) + 1) if k not in names]
        if missing:
            raise ListFormatError(f"{path}: no name for class index(es) {missing[:10]} (indices must be 0..K-1)")
        return [names[k] for k in range(len(names))]
    return [text for _, text in rows]


def _read_json(path: str, data: bytes) -> List[str]:
    import json

    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ListFormatError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(obj, list) and obj:
        return [str(x) for x in obj]
    if isinstance(obj, dict) and obj:
        try:
            indexed = {int(v): str(k) for k, v in obj.items()}
        except (TypeError, ValueError):
            raise ListFormatError(f"{path}: a JSON mapping must be {{name: index}}") from None
        if len(indexed) != len(obj):
            raise ListFormatError(f"{path}: two class names share an index")
        missing = [k for k in range(max(indexed) + 1) if k not in indexed]
        if missing:
            raise ListFormatError(f"{path}: no name for class index(es) {missing[:10]} (indices must be 0..K-1)")
        return [indexed[k] for k in range(len(indexed))]
    raise ListFormatError(f"{path}: expected a JSON list of names or a {{name: index}} mapping")
