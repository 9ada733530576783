"""Training checkpoints: atomic writes, exact-resume state, the frozen tower's identity.

A tdsk training checkpoint is a dict (loadable with ``torch.load(weights_only=True)``):

``format``            ``"tdsk.train/1"``
``model_state_dict``  trainable parameters and all buffers (BatchNorm statistics); the
                      frozen CLIP weights only when they cannot be recreated from a file or
                      tag (random init), see ``frozen``
``optimizer_state_dict``, ``scheduler``, ``scaler``   optimizer / LR schedule / GradScaler
``epoch``             number of completed epochs (training continues at this epoch)
``step``              optimizer-visible iterations done so far
``rng``               torch (CPU and CUDA), numpy and Python RNG states
``frozen``            ``{"clip_pretrained", "file_sha256", "weights_sha256", "weights_included"}``
``best``              ``{"val_top1", "epoch"}`` so far
``config``            the recipe the run used (plain YAML types)
``classes``           class names when known (used by ``tdsk.predict``)

Files are written to a temporary name in the same directory, flushed, fsync'ed and
renamed over the target, so a kill at any moment leaves either the old file or the
new one, never a torn one.
"""
from __future__ import annotations

import glob
import hashlib
import os
import random
import re
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from tdsk._io import plain  # noqa: F401  (config values -> weights_only types; re-exported)
from tdsk._checkpoint_io import (  # noqa: F401  (re-exported: the engine's checkpoint API)
    FORMAT,
    atomic_copy,
    atomic_save,
    frozen_parameter_names,
    load_model_state,
    stored_recipe,
    torch_load,
    weights_sha256,
)

EPOCH_PATTERN = "epoch_{:04d}.pt"
_EPOCH_RE = re.compile(r"epoch_(\d{4,})\.pt$")
BEST_NAME = "best.pt"


# ----------------------------------------------------------------------------- file IO
# Atomic writes (atomic_save, atomic_copy), weights_only reads (torch_load) and the
# model part of the format (FORMAT, load_model_state, weights_sha256, ...) live in
# tdsk._checkpoint_io, shared with tdsk.models; they are re-exported above.

def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    try:
        return torch_load(path, map_location)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RuntimeError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------- epoch files

def epoch_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``[(epoch, path), ...]`` of the epoch checkpoints in ``directory``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "epoch_*.pt")):
        m = _EPOCH_RE.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- model parts

def persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the buffers ``state_dict`` holds: not the derived, non-persistent
    ones (an additive attention mask holds -inf by design; a cache is recomputed)."""
    return [(f"{prefix}.{name}" if prefix else name, b) for prefix, mod in model.named_modules()
            for name, b in mod.named_buffers(recurse=False) if name not in mod._non_persistent_buffers_set]


def trainable_state_dict(model: nn.Module, include_frozen: bool = False,
                         tower: set | None = None) -> dict[str, torch.Tensor]:
    """State dict without the frozen tower (unless asked), detached CPU copies.

    ``tower``: the names of the frozen tower (default: every parameter without a
    gradient; a run with ``train.freeze`` passes the tower alone, so the side parameters
    it keeps fixed are still saved).
    """
    frozen = set() if include_frozen else (set(frozen_parameter_names(model)) if tower is None else set(tower))
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in frozen}


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def frozen_identity(model: nn.Module, clip_pretrained: Any) -> dict:
    """Where the frozen CLIP came from and a fingerprint of its weights."""
    ident = {
        "clip_pretrained": None if clip_pretrained is None else str(clip_pretrained),
        "file_sha256": None,
        "weights_sha256": weights_sha256(model),
        "weights_included": clip_pretrained in (None, "", "none", "None"),
    }
    if ident["clip_pretrained"] and os.path.isfile(os.path.expanduser(ident["clip_pretrained"])):
        ident["file_sha256"] = file_sha256(os.path.expanduser(ident["clip_pretrained"]))
    return ident


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def describe(paths: Iterable[str]) -> str:
    return ", ".join(os.path.basename(p) for p in paths)
