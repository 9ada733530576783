"""Recipes as data: load ``tdsk/configs/<name>.yaml`` (or a file) and apply overrides.

A recipe is one YAML file with the sections ``model:`` (read by
:func:`tdsk.models.build_model`), ``data:`` (read by :func:`tdsk.data.build_loader`),
and ``solver:``, ``train:``, ``eval:``, ``output:`` (read by :mod:`tdsk.engine.trainer`).
Their keys, defaults, types and ranges are one schema, :mod:`tdsk.schema`; a recipe
file and the overrides are validated against it the same way (unknown keys name the
closest valid ones, wrong values name their key).

``_base_: <recipe name or relative path>`` makes a file state only its differences
from another recipe (sections merge key by key; lists and values replace).

Overrides are dotted ``key=value`` strings whose values are parsed as YAML, so
``solver.lr=5e-4``, ``train.precision=fp32``, ``eval.skip_epochs=[1,2,3]`` and
``model.clip_pretrained=null`` all mean what they look like. A key may be one the
recipe file does not spell out, as long as the schema knows it (a leading ``+`` is
accepted and changes nothing); a typo must not silently start a 40-epoch run with
the default.
"""
from __future__ import annotations

import copy
import difflib
import os
from importlib import resources
from typing import Any, Iterable, Mapping

import yaml

from tdsk.schema import SECTIONS, ConfigError, Recipe, closest_keys, section_keys, validate_recipe

__all__ = [
    "ConfigError",
    "DataNotFoundError",
    "available_configs",
    "load_config",
    "apply_overrides",
    "flatten",
    "check_data_paths",
    "validate_recipe",
    "Recipe",
]

_CONFIG_PACKAGE = "tdsk.configs"


class DataNotFoundError(FileNotFoundError):
    """The dataset a recipe points at is not where the recipe says."""


def _config_dir() -> str:
    return str(resources.files(_CONFIG_PACKAGE))


def available_configs() -> list[str]:
    """Names of the recipes shipped in ``tdsk/configs`` (without ``.yaml``)."""
    return sorted(f[:-5] for f in os.listdir(_config_dir()) if f.endswith(".yaml"))


def _resolve(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    looks_like_path = os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if not looks_like_path:
        candidate = os.path.join(_config_dir(), name_or_path + ".yaml")
        if os.path.isfile(candidate):
            return candidate
    names = available_configs()
    stem = os.path.basename(name_or_path).removesuffix(".yaml")
    prefixed = [n for n in names if n.startswith(stem)] if stem else []
    close = prefixed + [n for n in difflib.get_close_matches(stem, names, n=3, cutoff=0.4) if n not in prefixed]
    close = close[:max(3, len(prefixed))]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    what = "file" if looks_like_path else "recipe"
    raise ConfigError(
        f"no such {what} {name_or_path!r}.{hint} Shipped recipes: {', '.join(names) or '(none)'}; "
        "--cfg also takes the path of a YAML file."
    )


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dicts are walked, lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _parse_value(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; users mean the number
        try:
            return float(value) if value.lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    return value


def _schema_keys(section: str) -> set[str]:
    """Keys a section accepts even when the recipe file does not spell them out."""
    return set(section_keys(section)) if section in SECTIONS else set()


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied.

    ``key`` must name an existing entry (leaf or section) unless it starts with ``+``.
    Raises :class:`ConfigError` naming the closest valid keys otherwise.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. solver.epochs=1)")
        key, text = item.split("=", 1)
        key = key.strip()
        add = key.startswith("+")
        key = key.lstrip("+")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        value = _parse_value(text)
        parts = key.split(".")
        node = cfg
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None and (add or (depth == 0 and parts[-1] in _schema_keys(part) and len(parts) == 2)):
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                _unknown_key(cfg, key, item)
            node = nxt
        if parts[-1] not in node and not add:
            if not (len(parts) == 2 and parts[1] in _schema_keys(parts[0])):
                _unknown_key(cfg, key, item)
        node[parts[-1]] = value
    return cfg


def _unknown_key(cfg: Mapping, key: str, item: str) -> None:
    valid = set(flatten(cfg))
    for section in {k.split(".", 1)[0] for k in valid} | set(SECTIONS):
        valid |= {f"{section}.{leaf}" for leaf in _schema_keys(section)}
    close = closest_keys(key, sorted(valid), n=4)
    hint = f" Closest valid keys: {', '.join(close)}." if close else ""
    raise ConfigError(f"unknown config key {key!r} in override {item!r}.{hint}")


BASE_KEY = "_base_"


def _merge(base: dict, child: Mapping) -> dict:
    """``child`` over ``base``: mappings merge key by key, everything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if value is None and isinstance(out.get(key), Mapping):
            continue  # an empty section in the file (`eval:` with comments only) keeps the base's
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_base(base: str, path: str) -> str:
    """A ``_base_`` entry of the recipe ``path``: next to that recipe, else a shipped recipe;
    never looked up in the working directory (a stray file there must not change a recipe)."""
    local = os.path.join(os.path.dirname(path), os.path.expanduser(base))
    if os.path.isfile(local):  # an absolute base is its own "local" path
        return local
    stem = base[:-5] if base.endswith(".yaml") else base
    packaged = os.path.join(_config_dir(), stem + ".yaml")
    if os.sep not in base and os.path.isfile(packaged):
        return packaged
    names = available_configs()
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"{path}: {BASE_KEY} {base!r}: no such file next to the recipe ({local}) and no shipped "
                      f"recipe of that name.{hint}")


def read_recipe(path: str, _chain: tuple = ()) -> dict:
    """Read a recipe file and resolve its ``_base_`` chain (no overrides, no validation).

    ``_base_: ssv1_b16`` (a path relative to this file, else a shipped recipe name, never the
    working directory; a list of them merges left to right) makes this file state only its differences: its
    sections are merged key by key over the base's, lists and scalars replace.
    """
    path = os.path.abspath(path)
    if path in _chain:
        raise ConfigError(f"{path}: recipe inheritance loops: " + " -> ".join(map(os.path.basename, _chain + (path,))))
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping with sections model/data/solver/train/...")
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        return cfg
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        if not isinstance(base, str):
            raise ConfigError(f"{path}: {BASE_KEY} must be a recipe name or path (or a list of them), got {base!r}")
        base_path = _resolve_base(base, path)
        merged = _merge(merged, read_recipe(base_path, _chain + (path,)))
    return _merge(merged, cfg)


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> dict:
    """Load a recipe by name (``ssv1_b16``, ``demo``, ...) or path and apply overrides.

    The recipe's ``_base_`` chain is resolved, then the overrides applied, then every
    section is validated against :mod:`tdsk.schema` (unknown keys, types, ranges; the
    key is named in the error). The returned dict has a ``_meta`` entry with the
    resolved source file and the overrides (recorded in checkpoints and the run directory).
    """
    path = _resolve(name_or_path)
    cfg = read_recipe(path)
    overrides = list(overrides)
    cfg = apply_overrides(cfg, overrides)
    validate_recipe(cfg, source=path)
    cfg["_meta"] = {"source": os.path.abspath(path), "name": os.path.basename(path)[:-5], "overrides": overrides}
    return cfg


# --------------------------------------------------------------------------------------
# Data presence check: fail in well under a second, before any model or worker starts.

_LAYOUT_HELP = {
    "frames": (
        "Expected layout (JPEG frame folders, e.g. Something-Something V1):\n"
        "  {root}/<video_dir>/{template}   frames numbered from 1\n"
        "  list file lines:  <video_dir> <num_frames> <label>   (paths relative to data.root)\n"
        "Prepare: download the dataset, extract each video's frames into its own folder\n"
        "  (SSv1 ships as frames; for SSv2 webm use e.g.\n"
        "  `ffmpeg -i video.webm -q:v 1 <video_dir>/img_%05d.jpg`), then write one list line per video."
    ),
    "video": (
        "Expected layout (video files, e.g. Something-Something V2 webm or Kinetics-400 mp4):\n"
        "  {root}/<relative/path/to/video.ext>\n"
        "  list file lines:  <relative/path/to/video.ext> <label>   (paths relative to data.root)\n"
        "Prepare: download the videos, keep them as they are (webm/VP9 or mp4/h264),\n"
        "  and write one list line per video with its integer class index."
    ),
}


def _data_format(data: Mapping) -> str:
    return "frames" if str(data.get("format", "")).lower() == "frames" else "video"


def _split_list_keys(data: Mapping, splits: Iterable[str]) -> list[tuple[str, Any]]:
    """``[("data.<split>_list", path), ...]`` for the given splits (the keys DataConfig has)."""
    return [(f"data.{split}_list", data[f"{split}_list"]) for split in splits if data.get(f"{split}_list")]


def check_data_paths(cfg: Mapping, splits: Iterable[str] = ("train", "val")) -> None:
    """Raise :class:`DataNotFoundError` with the expected layout if the data is missing.

    Checks only existence (cheap), so a wrong ``data.root`` is reported in
    milliseconds instead of after the model and the loader workers have started.
    """
    data = cfg.get("data") or {}
    name = (cfg.get("_meta") or {}).get("name", "<recipe>")
    root = data.get("root")
    problems = []
    if root in (None, "", "???"):
        problems.append("data.root is not set")
    elif not os.path.isdir(os.path.expanduser(str(root))):
        problems.append(f"data.root={root!r} does not exist or is not a directory")
    folders = data.get("layout", "lists") == "folders"
    entries = _split_list_keys(data, splits) + ([("data.labels", data["labels"])] if data.get("labels") else [])
    for key, value in entries:
        path = os.path.expanduser(str(value))
        if not os.path.isabs(path) and root and not os.path.exists(path):
            path = os.path.join(os.path.expanduser(str(root)), path)
        if folders and key != "data.labels":
            if not os.path.isdir(path):
                problems.append(f"{key}={value!r} is not a folder of <class name>/<video> (data.layout=folders)")
        elif not os.path.isfile(path):
            problems.append(f"{key}={value!r} does not exist")
    if not problems:
        return
    fmt = _data_format(data)
    layout = _LAYOUT_HELP[fmt].format(root=root or "<root>", template=data.get("template", "{:05d}.jpg"))
    list_keys = [k for k, _ in _split_list_keys(data, splits)] or ["data.<split>_list"]
    raise DataNotFoundError(
        f"recipe {name!r}: dataset not found:\n  - " + "\n  - ".join(problems) + "\n\n" + layout + "\n\n"
        f"Point the recipe at your copy with overrides, e.g.\n"
        f"  python -m tdsk.train --cfg {name} data.root=/data/{name.split('_')[0]} "
        + " ".join(f"{k}=/data/lists/{k.rsplit('.', 1)[-1]}.txt" for k in list_keys)
        + "\nor try the whole pipeline on the embedded demo first:  python -m tdsk.train"
    )
