"""Checkpoint files: safe reads, atomic writes, and the model part of tdsk's training format.

The one place where tdsk reads and writes ``.pt`` files; both the model layer
(:mod:`tdsk.models.official`, :mod:`tdsk.models.clip_encoder`) and the training engine
(:mod:`tdsk.engine.checkpoint`, which re-exports these names) use it. It imports
nothing from tdsk.

Reading: :func:`torch_load` is ``torch.load(weights_only=True)`` (tensors, containers
and plain types only, never code from the file), optionally falling back to
TorchScript for OpenAI's released CLIP files; :func:`load_file` adds clear errors for
missing and unreadable files; :func:`state_dict_of` finds the state dict inside a
checkpoint (``model_state_dict`` / ``state_dict`` / ``model``, DDP ``module.`` prefix
dropped); :func:`read_state_dict` is the two together.

Writing: :func:`atomic_save` / :func:`atomic_copy` write to a temporary name in the
target's directory, flush, fsync and rename, so a kill at any moment leaves either
the old file or the new one, never a torn one.

Training checkpoints (``format == FORMAT``) hold the trainable weights and buffers;
:func:`load_model_state` puts them into a model and checks that its frozen CLIP is
the one the run was trained with (:func:`weights_sha256`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn

__all__ = [
    "FORMAT",
    "atomic_save",
    "atomic_copy",
    "torch_load",
    "load_file",
    "state_dict_of",
    "read_state_dict",
    "frozen_parameter_names",
    "weights_sha256",
    "load_model_state",
    "stored_recipe",
]

# ``format`` tag of the training checkpoints written by ``python -m tdsk.train``.
FORMAT = "tdsk.train/1"

# Where a checkpoint dict keeps its state dict (official: model_state_dict), first match wins.
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "model_state")  # model_state: DiST


# ----------------------------------------------------------------------------- writing

def _fsync_dir(path: str) -> None:
    """Flush a directory entry (:func:`tdsk._io.fsync_dir`)."""
    from tdsk import _io

    _io.fsync_dir(path)


def _atomic_write(path: str, write) -> None:
    """``write(file)`` fills a temporary next to ``path`` that replaces it (tdsk._io)."""
    from tdsk import _io

    with _io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


atomic_write = _atomic_write  # ``atomic_write(path, write)``: ``write(file)`` fills a temporary, renamed over path


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically: temporary file, fsync, rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` atomically (temporary file, fsync, rename)."""
    def write(fout):
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, fout, 1 << 22)

    _atomic_write(dst, write)


# ----------------------------------------------------------------------------- reading

def torch_load(path: str, map_location: Any = "cpu", *, torchscript: bool = False) -> Any:
    """``torch.load(path, map_location, weights_only=True)``.

    ``torchscript=True``: a file that ``weights_only`` refuses is tried as a TorchScript
    archive (OpenAI's released CLIP files are) and its ``state_dict()`` returned. When
    that fails too, the ``torch.load`` error is raised.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if not torchscript:
            raise
        try:
            return torch.jit.load(path, map_location=map_location).state_dict()
        except Exception:
            raise exc from None


def load_file(path: str, *, what: str = "checkpoint", torchscript: bool = False) -> Any:
    """:func:`torch_load` to the CPU with errors that say what is wrong with the file.

    Raises ``FileNotFoundError`` when ``path`` is not a file and ``ValueError`` (naming
    the size and the cause) when it cannot be read. ``what`` names the file in messages.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} " + ("is not a file" if os.path.exists(path) else "does not exist"))
    try:
        return torch_load(path, "cpu", torchscript=torchscript)
    except Exception as exc:
        raise ValueError(
            f"cannot read {what} {path!r} ({os.path.getsize(path)} bytes): {type(exc).__name__}: {exc}. "
            "The file is truncated, corrupt, or not a torch.save file."
        ) from exc


def state_dict_of(obj: Any, path: str, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict a loaded checkpoint holds, DDP ``module.`` prefixes removed.

    ``obj`` itself or its first dict entry among ``model_state_dict``, ``state_dict``,
    ``model``; a ``ValueError`` (naming ``path``) unless that is a non-empty dict of tensors.
    """
    sd = obj
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what} {path!r} holds no state dict of tensors (top-level keys: "
                         f"{list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    # DDP prefix: the official test script strips every 'module.' substring.
    return {k.replace("module.", ""): v for k, v in sd.items()}


def read_state_dict(path: str, *, what: str = "checkpoint", torchscript: bool = False) -> Dict[str, torch.Tensor]:
    """``state_dict_of(load_file(path))``: the tensors of a checkpoint or weights file."""
    return state_dict_of(load_file(path, what=what, torchscript=torchscript), path, what)


# ----------------------------------------------------------------------------- training format

def frozen_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def weights_sha256(model: nn.Module, names=None) -> str:
    """SHA-256 of the frozen parameters (names, shapes, dtypes and bytes), in name order.

    ``names``: hash exactly these parameters instead (e.g. those a checkpoint leaves out).
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if (p.requires_grad if names is None else name not in names):
            continue
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_model_state(model: nn.Module, ckpt: Mapping, *, check_frozen: bool = True) -> None:
    """Load a tdsk training checkpoint's weights into ``model``, refusing partial loads.

    Keys absent from the checkpoint must all be frozen parameters, and, unless the
    checkpoint carries them, the model's frozen weights must be the very ones the
    run was trained with (same SHA-256); otherwise a clear error says what differs.
    """
    state = ckpt["model_state_dict"]
    own = model.state_dict()
    frozen = set(frozen_parameter_names(model))
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    missing_trainable = [k for k in missing if k not in frozen]
    if unexpected or missing_trainable:
        raise RuntimeError(
            "checkpoint does not match the model: "
            + (f"{len(unexpected)} unexpected keys (first: {unexpected[:5]}) " if unexpected else "")
            + (f"{len(missing_trainable)} missing trainable keys (first: {missing_trainable[:5]})" if missing_trainable else "")
            + " -- was it trained with another recipe (model.* settings)?"
        )
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise RuntimeError(f"checkpoint shapes differ from the model's (key, checkpoint, model): {shapes[:5]}")
    model.load_state_dict(state, strict=False)
    info = ckpt.get("frozen") or {}
    if check_frozen and missing and info.get("weights_sha256"):
        # the tensors the checkpoint relies on the model for: exactly the frozen tower it left out
        now = weights_sha256(model, names=set(missing))
        if now != info["weights_sha256"]:
            raise RuntimeError(
                "the frozen CLIP weights differ from those this checkpoint was trained with "
                f"(trained with clip_pretrained={info.get('clip_pretrained')!r}, file sha256 "
                f"{info.get('file_sha256')}); build the model with the same model.clip_pretrained"
            )


def stored_recipe(ckpt: Mapping) -> dict:
    """The recipe a training checkpoint stores, its ``model.variant`` made to agree with its
    weights. Runs started with ``fit(variant=...)`` (``--variant baseline``) before tdsk stored
    that override in the recipe kept the recipe's own variant; the weights tell: side-network
    tensors (``side.*``) mean ``tds_clip``, a bare ``head`` without them the mean-pool baseline."""
    cfg = dict(ckpt.get("config") or {})
    state = ckpt.get("model_state_dict") or {}
    model = dict(cfg.get("model") or {})
    stated = model.get("variant", "tds_clip")
    if not state or stated not in ("tds_clip", "baseline"):
        return cfg
    trained = "tds_clip" if any(k.startswith("side.") for k in state) else ("baseline" if "head.weight" in state
                                                                          else stated)
    if trained != stated:
        model["variant"] = trained
        cfg["model"] = model
    return cfg
