"""Model folders: a trained model as plain files, loadable with no pickle involved.

``save_pretrained(model, folder, labels=None, recipe=None, include_clip=True, card=None)``
writes::

    folder/
      config.json        {"format": "tdsk.folder/1", "recipe": {...the full recipe...},
                          "clip": {...where the frozen CLIP comes from...}, "num_classes", "card", ...}
      model.safetensors  the weights under tdsk's names (``model.state_dict()``); the frozen CLIP
                         (``encoder.*``) too unless ``include_clip=False``
      labels.txt         one class name per line, in index order (only when labels are known)
      README.md          a short model card: recipe, classes, training data and accuracy if known

``include_clip=False`` leaves the ``encoder.*`` tensors out: the folder then refers to
the CLIP weights of the recipe's ``model.clip_pretrained`` (an open_clip tag such as
``openai``, or a file), which :func:`from_pretrained` loads and checks against the
SHA-256 of the weights the model was saved with. A model whose CLIP was randomly
initialised (``clip_pretrained: null``, the tiny and demo recipes) cannot be saved that way.

``from_pretrained(folder)`` reads ``config.json`` (``json``) and ``model.safetensors``
(``safetensors``) only: no ``torch.load``, no pickle. A file whose tensors do not fit
the recipe's model (missing, unexpected or mis-shaped) is refused with the list of keys,
in the words of :func:`tdsk.models.load_checkpoint`.

The folder is written to a temporary sibling folder (every file fsync'ed) and renamed
into place, so an interrupted save never leaves a half-written model folder; saving
over an existing model folder replaces it.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from tdsk._checkpoint_io import _fsync_dir, weights_sha256
from tdsk._logging import logger
from tdsk._io import plain as _plain
from tdsk._paths import MARKER, check_replaceable, record_written
from tdsk.models.text_tower import placeholder_text_embeddings

__all__ = ["save_pretrained", "from_pretrained", "load_pretrained", "read_folder_config", "is_model_folder",
           "FOLDER_FORMAT", "CONFIG_NAME", "WEIGHTS_NAME", "LABELS_NAME", "CARD_NAME"]

FOLDER_FORMAT = "tdsk.folder/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.txt"
CARD_NAME = "README.md"
#: the frozen CLIP tower's tensors (left out with ``include_clip=False``)
CLIP_PREFIX = "encoder."

_RANDOM_CLIP = (None, "", "none", "None", "null")


# ----------------------------------------------------------------------------- helpers

def is_model_folder(path: str) -> bool:
    """``path`` is a folder holding ``config.json`` and ``model.safetensors``."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME))
            and os.path.isfile(os.path.join(path, WEIGHTS_NAME)))


def _resolve_recipe(model: nn.Module, recipe: Union[None, str, Mapping]) -> Dict:
    """The full recipe to store: a dict as given, a recipe name / YAML path loaded, or (None)
    the model's own section with the data-section defaults for its clip shape."""
    model_section = dict(getattr(model, "config", None) or {})
    if recipe is None:
        if not model_section:
            raise ValueError("save_pretrained: the model has no .config (model section); pass recipe=")
        data = {k: model_section[k] for k in ("num_segments", "num_local", "input_size") if k in model_section}
        return {"model": model_section, "data": data}
    if isinstance(recipe, str):
        from tdsk.config import load_config  # noqa: PLC0415

        recipe = load_config(recipe)
    if not isinstance(recipe, Mapping):
        raise TypeError(f"save_pretrained: recipe must be a dict, a recipe name or a YAML path, "
                        f"got {type(recipe).__name__}")
    out = copy.deepcopy(dict(recipe))
    if model_section:
        # the weights belong to the model as built: its section is the truth
        out["model"] = {**dict(out.get("model") or {}), **model_section}
    return out


def _read_labels_arg(labels: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    from tdsk.data.labels import labels_for_model  # noqa: PLC0415

    return labels_for_model(labels, None, "save_pretrained(labels=...)")


def _read_label_lines(path: str) -> List[str]:
    from tdsk.data.labels import read_labels  # noqa: PLC0415

    return read_labels(path)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())




def _card_text(recipe: Mapping, classes: Optional[List[str]], num_classes: int, clip: Mapping,
               card: Union[None, str, Mapping], folder_name: str) -> str:
    m = recipe.get("model") or {}
    d = recipe.get("data") or {}
    meta = recipe.get("_meta") or {}
    extra = card if isinstance(card, Mapping) else {}
    title = extra.get("title") or f"TDS-CLIP model {folder_name}"
    lines = [f"# {title}", ""]
    if extra.get("description"):
        lines += [str(extra["description"]), ""]
    name = meta.get("name") or extra.get("recipe")
    lines += [
        "| | |", "|---|---|",
        f"| recipe | {name or 'custom'} (full recipe in `config.json`) |",
        f"| model | {m.get('variant', 'tds_clip')} on {m.get('arch', '?')}, "
        f"{'side width ' + str(m['side_dim']) + ', ' if 'side_dim' in m else ''}"
        f"T={m.get('num_segments', '?')} x M={m.get('num_local', '?')} frames, {m.get('input_size', '?')} px |",
        f"| frozen CLIP | {'included in model.safetensors' if clip.get('included') else 'not included: loaded from '}"
        f"{'' if clip.get('included') else repr(clip.get('clip_pretrained'))} |",
        f"| classes | {num_classes}" + (" (names in `labels.txt`)" if classes else "") + " |",
    ]
    training = extra.get("training_data")
    if training is None and (d.get("train_list") or d.get("dataset")):
        parts = [str(d.get("dataset")) if d.get("dataset") else None,
                 f"list {os.path.basename(str(d['train_list']))}" if d.get("train_list") else None]
        training = ", ".join(p for p in parts if p)
    lines.append(f"| training data | {training if training else 'unknown'} |")
    acc = extra.get("accuracy")
    if isinstance(acc, Mapping):
        acc = ", ".join(f"{k} {v}" for k, v in acc.items())
    lines.append(f"| accuracy | {acc if acc not in (None, '') else 'unknown'} |")
    views = (recipe.get("eval") or {}).get("views") or [d.get("test_crops", 3), d.get("test_clips", 2)]
    lines.append(f"| test views | {views[0]}x{views[1]} (crops x clips) |")
    if classes:
        shown = ", ".join(classes[:20]) + (f", ... ({len(classes) - 20} more)" if len(classes) > 20 else "")
        lines += ["", f"Classes: {shown}"]
    lines += ["", "Use it:", "", "```python", "import tdsk", "",
              f"rec = tdsk.Recognizer.from_pretrained({folder_name!r})",
              "print(rec.predict(\"video.mp4\", top_k=5))", "```", "",
              "Loading reads `config.json` and `model.safetensors` only (no pickle).", ""]
    if isinstance(card, str) and card.strip():
        lines += [card.strip(), ""]
    elif extra.get("notes"):
        lines += [str(extra["notes"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- saving

def save_pretrained(model: nn.Module, folder: str, labels: Union[None, str, Sequence[str]] = None,
                    recipe: Union[None, str, Mapping] = None, include_clip: bool = True,
                    card: Union[None, str, Mapping] = None, overwrite: bool = False) -> str:
    """Write ``model`` as a model folder (see the module docstring); returns ``folder``.

    Args:
        model: a tdsk model (``tdsk.models.build_model``), weights as they are now.
        folder: the target folder; replaced only when tdsk wrote it and nothing in it changed
            since (the ``.tdsk-written.json`` marker records each file's size and SHA-256);
            any other existing file or non-empty folder is refused unless ``overwrite``.
        labels: class names in index order (a list, or a file with one name per line).
        recipe: the full recipe (dict, recipe name or YAML path); default the model's
            own section plus data defaults for its clip shape. The model section stored
            is the model's (``model.config``).
        include_clip: store the frozen CLIP weights too (default). ``False``: refer to
            the recipe's ``model.clip_pretrained`` instead (a tag or file; not random init).
        card: extra model-card facts: a dict with any of ``title``, ``description``,
            ``training_data``, ``accuracy`` (number, text or dict), ``notes``; or a text
            appended to the card.
        overwrite: replace an existing ``folder`` even when tdsk cannot prove it wrote it.
    """
    from safetensors.torch import save_file  # noqa: PLC0415

    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"save_pretrained: {folder} exists and is not a folder")
    check_replaceable(folder, "save_pretrained: folder", overwrite, flag="overwrite=True (--overwrite)")
    full = _resolve_recipe(model, recipe)
    msec = full.get("model") or {}
    names = _read_labels_arg(labels)
    if names is None and getattr(model, "open_vocabulary", False) and getattr(model, "class_names", None):
        names = [str(n) for n in model.class_names]  # a text classifier's classes are its names: keep them
    trained = getattr(model, "trained_class_names", None)  # names a fixed head scores (M2-CLIP's linear head)
    num_classes = int(getattr(model, "num_classes", 0) or msec.get("num_classes") or 0)
    if names is not None and num_classes and len(names) != num_classes:
        raise ValueError(f"save_pretrained: {len(names)} labels for a model of {num_classes} classes")
    clip_src = msec.get("clip_pretrained")
    state = model.state_dict()
    clip_keys = [k for k in state if k.startswith(CLIP_PREFIX)]
    if not include_clip:
        if clip_src in _RANDOM_CLIP:
            raise ValueError("save_pretrained(include_clip=False): the model's frozen CLIP is randomly initialised "
                             "(model.clip_pretrained is null), so nothing could recreate it; keep include_clip=True")
        state = {k: v for k, v in state.items() if not k.startswith(CLIP_PREFIX)}
    tensors = {}
    seen = {}
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:  # safetensors refuses shared storage: store a copy
            t = t.clone()
        elif ptr is not None:
            seen[ptr] = k
        tensors[k] = t
    clip_info = {
        "included": bool(include_clip),
        "clip_pretrained": None if clip_src in _RANDOM_CLIP else str(clip_src),
        "keys": len(clip_keys),
        "weights_sha256": weights_sha256(model, names=set(clip_keys)) if clip_keys else None,
    }
    arch = msec.get("arch")
    from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS  # noqa: PLC0415

    config = {
        "format": FOLDER_FORMAT,
        "variant": getattr(model, "variant", msec.get("variant")),
        "num_classes": num_classes,
        "recipe": _plain(full),
        "clip": clip_info,
        "vit_config": _plain(TDSK_VIT_CONFIGS[arch]) if arch in TDSK_VIT_CONFIGS else None,
        "labels": LABELS_NAME if names is not None else None,
        "trained_class_names": [str(n) for n in trained] if trained else None,
        "card": _plain(card) if isinstance(card, Mapping) else None,
        "tensors": len(tensors),
    }
    from tdsk._version import version  # noqa: PLC0415

    config["tdsk_version"] = version()

    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt", "tdsk": FOLDER_FORMAT})
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, allow_nan=False)
            f.write("\n")
        if names is not None:
            with open(os.path.join(tmp, LABELS_NAME), "w", encoding="utf-8") as f:
                f.write("".join(n.replace("\n", " ").replace("\r", " ") + "\n" for n in names))
        with open(os.path.join(tmp, CARD_NAME), "w", encoding="utf-8") as f:
            f.write(_card_text(full, names, num_classes, clip_info, card, os.path.basename(folder)))
        record_written(tmp, [n for n in os.listdir(tmp) if n != MARKER], "save_pretrained")
        for name in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, name))
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if os.path.isdir(folder):
            if os.listdir(folder):
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=parent)
                os.rmdir(old)
                os.replace(folder, old)
            else:
                os.rmdir(folder)
        os.replace(tmp, folder)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ----------------------------------------------------------------------------- loading

def read_folder_config(folder: str) -> Dict:
    """``config.json`` of a model folder, checked (format, recipe with a model section)."""
    folder = os.path.expanduser(str(folder))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder!r} does not exist")
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model folder {folder!r} has no {CONFIG_NAME} (expected {CONFIG_NAME} + "
                                f"{WEIGHTS_NAME}, written by tdsk.models.save_pretrained)")
    if not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        raise FileNotFoundError(f"model folder {folder!r} has no {WEIGHTS_NAME}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model folder {folder!r}: cannot read {CONFIG_NAME}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"model folder {folder!r}: {CONFIG_NAME} is not a tdsk model folder config "
                         f"(format {got!r}, expected {FOLDER_FORMAT!r})")
    if not isinstance(config.get("recipe"), dict) or not isinstance(config["recipe"].get("model"), dict):
        raise ValueError(f"model folder {folder!r}: {CONFIG_NAME} has no recipe with a model section")
    return config


def _check_tensors(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str,
                   allowed_missing: Sequence[str] = ()) -> None:
    """Refuse missing / unexpected / mis-shaped tensors, naming them (load_checkpoint's wording)."""
    from tdsk.models.official import _diagnose  # noqa: PLC0415

    own = model.state_dict()
    allowed = set(allowed_missing)
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd and k not in allowed]
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if bad:
        problems.append(f"{len(bad)} shape mismatches (file vs model): "
                        + "; ".join(f"{k}: {g} vs {w}" for k, g, w in bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file: {missing[:8]}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors in the file: {unexpected[:8]}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise ValueError(f"{where} does not fit this model: " + " | ".join(problems) + _diagnose(model, bad))


@contextlib.contextmanager
def _quiet():
    """Silence tdsk's info logs (the "random initialisation" note of a tower about to be replaced)."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build_for_weights(section: Dict, weights: Mapping[str, torch.Tensor], where: str,
                       class_names: Optional[Sequence[str]] = None) -> nn.Module:
    """Build the model of ``section``, check that ``weights`` are exactly its tensors, put them in.

    The skeleton is built on the meta device (no random init of a large CLIP), then the
    tensors are assigned; if that is not possible (an op without a meta kernel, a
    buffer outside the state dict left on meta) the model is built normally instead.
    """
    from tdsk.models.factory import build_model  # noqa: PLC0415

    skeleton = {**section, "clip_pretrained": None}
    model = None
    try:
        with _quiet(), torch.device("meta"), placeholder_text_embeddings():
            model = build_model(skeleton, class_names=class_names)
    except Exception:
        model = None
    if model is not None:
        _check_tensors(model, weights, where)
        try:
            own = model.state_dict()
            # fresh allocations (a copy, in the model's dtype): tensors that share the file's
            # buffer can take other kernel paths and change the logits in the last bit
            cast = {k: v.to(dtype=own[k].dtype, copy=True) for k, v in weights.items()}
            model.load_state_dict(cast, strict=True, assign=True)
            if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
                raise RuntimeError("meta tensors left")
        except Exception:
            model = None
    if model is None:
        with _quiet(), placeholder_text_embeddings():
            model = build_model(skeleton, class_names=class_names)
        _check_tensors(model, weights, where)
        model.load_state_dict(dict(weights), strict=True)
    for name, p in model.named_parameters():  # the frozen tower stays frozen after assign
        if name.startswith(CLIP_PREFIX):
            p.requires_grad_(False)
    model.config["clip_pretrained"] = section.get("clip_pretrained")
    return model


def load_pretrained(folder: str, recipe: Optional[Mapping] = None, device: Union[str, torch.device] = "cpu"
                    ) -> Tuple[nn.Module, Dict, Optional[List[str]], Dict]:
    """``(model, recipe, classes, config)`` of a model folder; the model in eval mode on ``device``.

    ``recipe``: use this recipe instead of the folder's (its model section must describe
    the same model). Only ``json`` and ``safetensors`` read the files.
    """
    from safetensors.torch import load_file  # noqa: PLC0415

    from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS, register_vit_config  # noqa: PLC0415
    from tdsk.models.factory import build_model, model_config  # noqa: PLC0415

    folder = os.path.expanduser(str(folder))
    config = read_folder_config(folder)
    cfg = copy.deepcopy(dict(recipe)) if recipe is not None else copy.deepcopy(config["recipe"])
    vit = config.get("vit_config")
    arch = (cfg.get("model") or {}).get("arch")
    if vit and arch and arch not in TDSK_VIT_CONFIGS:
        register_vit_config(arch, vit["vision_cfg"], vit.get("embed_dim", 64))
    section = model_config(cfg["model"])
    # the names a fixed head was trained on (M2-CLIP's linear head, its MLM vocabulary): the model
    # is built with them (as many classes as the head has rows), then switched to the folder's labels
    trained = config.get("trained_class_names") or None
    build_section = {**section, "num_classes": len(trained)} if trained else section
    weights_path = os.path.join(folder, WEIGHTS_NAME)
    try:
        sd = load_file(weights_path)
    except Exception as exc:
        raise ValueError(f"cannot read {weights_path} ({os.path.getsize(weights_path)} bytes): "
                         f"{type(exc).__name__}: {exc}. The file is truncated, corrupt, or not safetensors.") from exc
    where = f"model folder {folder!r} ({WEIGHTS_NAME})"
    clip = config.get("clip") or {}
    has_clip = any(k.startswith(CLIP_PREFIX) for k in sd)
    if clip.get("included", True) or has_clip:
        model = _build_for_weights(build_section, sd, where, trained)
    else:
        src = clip.get("clip_pretrained") or section.get("clip_pretrained")
        if src in _RANDOM_CLIP:
            raise ValueError(f"{where}: the folder holds no frozen CLIP weights and names no CLIP to load "
                             "(clip.clip_pretrained is null)")
        section = {**section, "clip_pretrained": src}
        with placeholder_text_embeddings():  # the folder holds a text classifier's embeddings
            model = build_model({**build_section, "clip_pretrained": src}, class_names=trained)  # loads the CLIP
        frozen = [k for k in model.state_dict() if k.startswith(CLIP_PREFIX)]
        _check_tensors(model, sd, where, allowed_missing=frozen)
        model.load_state_dict(sd, strict=False)
        want = clip.get("weights_sha256")
        if want:
            now = weights_sha256(model, names=set(frozen))
            if now != want:
                raise ValueError(f"{where}: the frozen CLIP weights loaded from {src!r} differ from those the model "
                                 f"was saved with (sha256 {now[:12]} vs {want[:12]}); use the same CLIP file/tag")
    cfg["model"] = {**dict(cfg.get("model") or {}), **{k: section[k] for k in section if k != "clip_pretrained"},
                    "clip_pretrained": section.get("clip_pretrained")}
    labels_path = os.path.join(folder, LABELS_NAME)
    classes = _read_label_lines(labels_path) if os.path.isfile(labels_path) else None
    want = {int(getattr(model, "num_classes", 0) or 0), int(config.get("num_classes") or 0) if trained else 0}
    if classes is not None and len(classes) in want:
        if getattr(model, "live_class_texts", False) and list(getattr(model, "class_names", None) or []) != classes:
            model.use_classes(classes)  # a text classifier computing its class texts live: the folder's names
        elif getattr(model, "class_names", False) is None:
            model.class_names = list(classes)  # a text classifier's names (docs/protocols.md)
    model.to(torch.device(device)).eval()
    return model, cfg, classes, config


def from_pretrained(folder: str, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model of a model folder (:func:`save_pretrained`), in eval mode on ``device``.

    For the recipe and the class names too use :func:`load_pretrained`, or
    ``tdsk.Recognizer.from_pretrained(folder)`` for ready-made inference.
    """
    return load_pretrained(folder, device=device)[0]
