"""Your own dataset: class names from ``data.labels`` and lists derived from class folders.

:func:`resolve_dataset` runs when a training starts (``python -m tdsk.train``), before the
recipe is recorded:

* ``data.labels`` (``labels.txt``, one class name per line, or an ``index,name`` CSV)
  gives the class names; ``model.num_classes`` is their number (or must equal it).
* ``data.layout: folders``: ``data.train_list`` / ``val_list`` / ``test_list`` name
  folders (relative to ``data.root``) laid out as ``<folder>/<class name>/<video>``
  (Kinetics style). The lists are derived from them and written to
  ``<run dir>/lists/<split>-<hash>.txt`` (``<path relative to root> <label>``; paths may
  contain spaces), with ``labels-<hash>.txt`` beside them. The name holds a hash of the
  content, so a file is never replaced: a resumed run whose folders changed (videos
  added) points at other lists, which the resume check reports as a changed recipe.
  The recorded recipe points at those lists, so the run can be resumed and evaluated
  like any other. The files are written only once the run holds its directory. Classes are the training folder's
  sub-folders in sorted order, unless ``data.labels`` fixes the names and order.
"""
from __future__ import annotations

import os
import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, MutableMapping, Optional

from tdsk.data.labels import read_labels
from tdsk.schema import ConfigError

__all__ = ["VIDEO_EXTENSIONS", "DatasetPlan", "plan_dataset", "resolve_dataset", "scan_class_folders"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ogv", ".ts", ".mts")  # the one list (data.prepare, predict use it too)


def _under_root(root: str, path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(os.path.expanduser(root or ""), path)


def scan_class_folders(folder: str) -> Dict[str, List[str]]:
    """``{class name: [video paths, sorted]}`` of ``folder/<class>/<video>`` (hidden entries skipped)."""
    if not os.path.isdir(folder):
        raise ConfigError(f"data.layout=folders: {folder} is not a folder of <class>/<video>")
    out: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isdir(sub):
            continue
        out[name] = sorted(os.path.join(sub, f) for f in os.listdir(sub)
                           if not f.startswith(".") and f.lower().endswith(VIDEO_EXTENSIONS))
    if not out:
        raise ConfigError(f"data.layout=folders: {folder} has no class sub-folders")
    return out


@dataclass
class DatasetPlan:
    """Class names and the list files still to write (``{path: text}``)."""

    names: Optional[List[str]] = None
    files: Dict[str, str] = field(default_factory=dict)

    def write(self) -> None:
        """Write the files that do not exist yet (same name = same content)."""
        for path, text in self.files.items():
            if os.path.exists(path):
                continue
            from tdsk import _io

            _io.write_text(path, text)


def plan_dataset(cfg: MutableMapping, run_dir: str) -> DatasetPlan:
    """Apply ``data.labels`` / ``data.layout`` to ``cfg`` in place, writing nothing yet."""
    data, model = cfg["data"], cfg.setdefault("model", {})
    root = data.get("root") or ""
    plan = DatasetPlan()
    names = read_labels(_under_root(root, data["labels"])) if data.get("labels") else None
    if data.get("layout", "lists") == "folders":
        names = _derive_lists(data, root, names, os.path.join(run_dir, "lists"), plan.files)
    if names is None:
        return plan
    subset = data.get("class_subset", "all")
    if subset != "all":  # base-to-novel: the model's classes are the base (novel) ones (docs/protocols.md)
        from tdsk.data.protocols import class_split  # noqa: PLC0415

        base, novel = class_split(names, _under_root(root, data["base_classes"]) if data.get("base_classes") else None,
                                  float(data.get("base_fraction", 0.5)), int(data.get("class_split_seed", 0)))
        names = base if subset == "base" else novel
    if model.get("num_classes") is None:
        model["num_classes"] = len(names)
    elif int(model["num_classes"]) != len(names):
        raise ConfigError(f"model.num_classes={model['num_classes']} but data.labels has {len(names)} class names"
                          + (f" in data.class_subset={subset}" if subset != "all" else ""))
    plan.names = names
    return plan


def resolve_dataset(cfg: MutableMapping, run_dir: str) -> Optional[List[str]]:
    """:func:`plan_dataset` and write its files; returns the class names (or None)."""
    plan = plan_dataset(cfg, run_dir)
    plan.write()
    return plan.names


def _hashed(out: str, stem: str, text: str) -> str:
    return os.path.join(out, f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:10]}.txt")


def _derive_lists(data: MutableMapping, root: str, names: Optional[List[str]], out: str,
                  files: Dict[str, str]) -> List[str]:
    train = data.get("train_list")
    if not train:
        raise ConfigError("data.layout=folders needs data.train_list: the training folder (relative to data.root)")
    scanned = {split: scan_class_folders(_under_root(root, data[f"{split}_list"]))
               for split in ("train", "val", "test") if data.get(f"{split}_list")}
    if names is None:
        names = list(scanned["train"])
    index = {n: i for i, n in enumerate(names)}
    base = os.path.abspath(os.path.expanduser(root)) if root else None
    for split, classes in scanned.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise ConfigError(f"data.{split}_list={data[f'{split}_list']!r}: class folder(s) {unknown[:5]} are not in "
                              "data.labels")
        lines = []
        for name, videos in classes.items():
            for v in videos:
                rel = os.path.relpath(os.path.abspath(v), base) if base else os.path.abspath(v)
                lines.append(f"{rel} {index[name]}\n")
        if not lines:
            raise ConfigError(f"data.{split}_list={data[f'{split}_list']!r}: no videos ({', '.join(VIDEO_EXTENSIONS)})")
        text = "".join(lines)
        path = _hashed(out, split, text)
        files[path] = text
        data[f"{split}_list"] = path
    text = "".join(n + "\n" for n in names)
    data["labels"] = _hashed(out, "labels", text)
    files[data["labels"]] = text
    data["layout"] = "lists"
    data["format"] = "video"
    return names
