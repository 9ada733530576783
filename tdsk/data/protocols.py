"""The list side of the open-vocabulary evaluation protocols (docs/protocols.md).

* few-shot (``data.few_shot: K``, ``data.few_shot_seed``): the training list keeps K clips of
  every class, drawn by :func:`few_shot_records` (the same draw as ``python -m tdsk.data.prepare
  few-shot``);
* base-to-novel (``data.class_subset: base | novel``, ``data.base_classes`` or
  ``data.class_split_seed`` + ``data.base_fraction``): every list keeps the clips of the base
  (novel) classes of ``data.labels``, their labels re-indexed to the base (novel) class order
  (:func:`class_split`, :func:`subset_records`), as in the base-to-novel protocol of
  Rasheed et al., "Fine-tuned CLIP Models are Efficient Video Learners" (CVPR 2023).

Both are deterministic: the draws use ``random.Random(seed)`` on the list order and the class
order only, never the global random state.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from tdsk.data.labels import read_labels
from tdsk.data.lists import VideoRecord
from tdsk.schema import ConfigError

__all__ = ["few_shot_records", "class_split", "subset_records", "protocol_class_names", "apply_protocols"]


def few_shot_records(records: Sequence, shots: int, seed: int = 0, source: str = "the list",
                     key: str = "data.few_shot") -> List:
    """``shots`` entries of every class (label) of ``records``, drawn with ``seed``, in list order.

    A class with fewer than ``shots`` entries is an error (:class:`ConfigError` naming ``key``,
    the class and its count): a K-shot run must see K clips of every class. Classes absent from
    the list are not counted (the list defines the classes it holds).
    """
    if int(shots) < 1:
        raise ConfigError(f"{key} must be >= 1 clips per class, got {shots}")
    by_class: Dict[int, List[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[int(r.label)].append(i)
    short = {c: len(v) for c, v in sorted(by_class.items()) if len(v) < int(shots)}
    if short:
        shown = ", ".join(f"class {c}: {n}" for c, n in list(short.items())[:5])
        raise ConfigError(f"{key}={shots}: {source} has fewer than {shots} clips of {len(short)} class(es) ({shown}); "
                          "lower the shots or complete the list")
    rng = random.Random(int(seed))
    keep = set()
    for c in sorted(by_class):
        keep.update(rng.sample(by_class[c], int(shots)))
    return [r for i, r in enumerate(records) if i in keep]


def class_split(names: Sequence[str], base_classes: str | None = None, fraction: float = 0.5,
                seed: int = 0, key: str = "data.base_classes") -> Tuple[List[str], List[str]]:
    """``(base, novel)`` class names, each in the order of ``names``.

    ``base_classes``: a file naming the base classes (any class-name format,
    :func:`tdsk.data.labels.read_labels`; every name must be one of ``names``). Without it,
    ``round(fraction * K)`` classes (at least 1, at most K - 1) are drawn with ``seed``.
    """
    names = [str(n) for n in names]
    if len(names) < 2:
        raise ConfigError(f"a base-to-novel split needs at least 2 classes, got {len(names)}")
    if base_classes:
        chosen = read_labels(base_classes)
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ConfigError(f"{key}={base_classes!r}: {len(unknown)} name(s) are not classes of data.labels "
                              f"(e.g. {unknown[:3]})")
        base = set(chosen)
        if len(base) == len(names):
            raise ConfigError(f"{key}={base_classes!r} names every class: no novel class is left")
    else:
        k = min(max(int(round(float(fraction) * len(names))), 1), len(names) - 1)
        base = set(random.Random(int(seed)).sample(names, k))
    return [n for n in names if n in base], [n for n in names if n not in base]


def subset_records(records: Sequence, names: Sequence[str], keep: Sequence[str]) -> List:
    """The entries of ``records`` (labels index ``names``) whose class is in ``keep``, re-labelled
    with the index in ``keep``."""
    where = {n: i for i, n in enumerate(keep)}
    out = []
    for r in records:
        name = names[r.label] if 0 <= r.label < len(names) else None
        if name in where:
            out.append(VideoRecord(r.path, where[name], r.num_frames, r.line))
    return out


def _data_path(data, path: str) -> str:
    """A data file as :func:`tdsk.data.loader.load_records` finds a list: as given, else under ``data.root``."""
    path = os.path.expanduser(str(path))
    if not os.path.isabs(path) and not os.path.exists(path) and data.root:
        candidate = os.path.join(os.path.expanduser(data.root), path)
        if os.path.exists(candidate):
            return candidate
    return path


def _split_of(data) -> Tuple[List[str], List[str], List[str]]:
    names = read_labels(_data_path(data, data.labels))
    base, novel = class_split(names, _data_path(data, data.base_classes) if data.base_classes else None,
                              data.base_fraction, data.class_split_seed)
    return names, base, novel


def protocol_class_names(data, subset: str | None = None) -> List[str] | None:
    """The class names the lists of ``data`` (a :class:`~tdsk.data.DataConfig`) are indexed by
    under ``subset`` (default ``data.class_subset``): ``None`` for ``all`` without labels."""
    subset = subset or data.class_subset
    if subset == "all":
        return read_labels(_data_path(data, data.labels)) if data.labels else None
    names, base, novel = _split_of(data)
    return base if subset == "base" else novel


def apply_protocols(data, records: List, split: str, source: str) -> List:
    """``records`` of ``split`` as the protocols of ``data`` want them: the class subset on
    every split, then the few-shot draw on the train split."""
    if data.class_subset != "all":
        names, base, novel = _split_of(data)
        records = subset_records(records, names, base if data.class_subset == "base" else novel)
    if split == "train" and data.few_shot is not None:
        records = few_shot_records(records, data.few_shot, data.few_shot_seed, source)
    return records
