"""Fine-tuning: start a run from the weights of another model (``train.init_from``).

Unlike ``--resume``, only weights are taken: the optimizer, the schedule and the epoch
counter start fresh. Every tensor whose name and shape match is loaded; tensors whose
shape differs (the classifier head of a model trained on other classes, a side network
of another width) keep their fresh initialisation; tensors of the source the model does
not have are ignored. A short table says what happened, by module.

Sources: a tdsk training checkpoint (``epoch_N.pt`` / ``best.pt``), an official TDS-CLIP
checkpoint (``{'model_state_dict': {visual.*, fc.*}}``, with or without ``module.``), or
a model folder (``model.safetensors`` + ``config.json``) when that format is available.
``train.freeze`` (module-name prefixes such as ``side.sme``) keeps parts of the side
network fixed.
"""
from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from tdsk._logging import logger
from tdsk.schema import ConfigError

__all__ = ["InitReport", "init_from", "freeze", "read_source_state"]


@dataclass
class InitReport:
    loaded: List[str] = field(default_factory=list)
    reinitialised: List[tuple] = field(default_factory=list)  # (name, source shape, model shape)
    ignored: List[str] = field(default_factory=list)            # in the source, not in the model
    kept: List[str] = field(default_factory=list)                # in the model, not in the source

    def table(self) -> str:
        def group(name: str) -> str:
            parts = name.split(".")
            return ".".join(parts[:2]) if parts[0] in ("side", "encoder") and len(parts) > 2 else parts[0]

        rows: "OrderedDict[str, Counter]" = OrderedDict()
        for kind, names in (("loaded", self.loaded), ("re-initialised", [n for n, *_ in self.reinitialised]),
                            ("ignored", self.ignored), ("not in source", self.kept)):
            for n in names:
                rows.setdefault(group(n), Counter())[kind] += 1
        kinds = ["loaded", "re-initialised", "not in source", "ignored"]
        width = max([len(k) for k in rows] + [6])
        lines = [f"  {'module':<{width}}  " + "  ".join(f"{k:>14}" for k in kinds)]
        for module, counts in rows.items():
            lines.append(f"  {module:<{width}}  " + "  ".join(f"{counts.get(k, 0):>14}" for k in kinds))
        for name, src, dst in self.reinitialised[:5]:
            lines.append(f"  re-initialised {name}: source {tuple(src)} vs model {tuple(dst)}")
        return "\n".join(lines)


def read_source_state(path: str, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The source's tensors under tdsk's names."""
    from tdsk.engine import checkpoint as C

    if os.path.isdir(path):
        st = os.path.join(path, "model.safetensors")
        if not os.path.isfile(st):
            raise ConfigError(f"train.init_from={path!r}: a folder must hold model.safetensors")
        from safetensors.torch import load_file

        return dict(load_file(st))
    if not os.path.isfile(path):
        raise ConfigError(f"train.init_from={path!r}: no such file or folder")
    obj = C.load(path)
    if C.is_training_checkpoint(obj):
        return dict(obj["model_state_dict"])
    state = obj.get("model_state_dict", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"train.init_from={path!r}: neither a tdsk checkpoint, an official TDS-CLIP checkpoint "
                          "nor a model folder")
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith(("visual.", "fc.")) for k in state):  # official names -> tdsk names
        from tdsk.models import official_key_map

        back = {off: own for own, off in official_key_map(model).items()}
        state = {back.get(k, k): v for k, v in state.items()}
    return state


def init_from(model: nn.Module, path: str, keep: Sequence[str] = ()) -> InitReport:
    """Load every tensor of ``path`` whose name and shape match ``model``'s (see module docstring).

    ``keep``: names never loaded (the frozen CLIP tower when it comes from
    ``model.clip_pretrained``: checkpoints leave it out and recreate it from there).
    """
    keep = set(keep)
    source = {k: v for k, v in read_source_state(path, model).items() if k not in keep}
    own = model.state_dict()
    report = InitReport()
    take = {}
    for name, value in source.items():
        if name not in own:
            report.ignored.append(name)
        elif tuple(value.shape) != tuple(own[name].shape):
            report.reinitialised.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            take[name] = value
            report.loaded.append(name)
    report.kept = [n for n in own if n not in source and n not in keep]
    if not take:
        raise ConfigError(f"train.init_from={path!r}: no tensor of it matches this model by name and shape "
                          "(another architecture?)")
    model.load_state_dict(take, strict=False)
    logger.info(f"train.init_from {path}: {len(report.loaded)} tensors loaded, {len(report.reinitialised)} "
                f"re-initialised (shape differs), {len(report.ignored)} ignored\n{report.table()}")
    return report


def freeze(model: nn.Module, prefixes: Sequence[str]) -> List[str]:
    """``requires_grad=False`` for the trainable parameters under each prefix (``train.freeze``)."""
    frozen = []
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            modules = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"train.freeze: {prefix!r} matches no trainable parameter; modules: "
                              + ", ".join(modules[:20]))
        frozen += hits
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    if frozen:
        logger.info(f"train.freeze: {len(frozen)} parameter tensors kept fixed ({', '.join(prefixes)})")
    return frozen
