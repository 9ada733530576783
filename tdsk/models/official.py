"""The official TDS-CLIP checkpoint format: names, order, export, and loading (docs/model.md §9).

Official format (docs/model.md §9): ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}``,
keys ``visual.*`` and ``fc.*`` (an optional ``module.`` prefix), frozen CLIP weights
included, fp32 tensors, ``num_batches_tracked`` int64. tdsk's module tree reads like
the paper; :func:`official_key_map` is the one-to-one name map between the two:

=========================================  ===========================================================
tdsk                                       official
=========================================  ===========================================================
``encoder.{class_embedding,...,ln_pre}``   ``visual.{class_embedding,positional_embedding,conv1,ln_pre}``
``encoder.transformer.resblocks.k.*``      ``visual.transformer.resblocks.k.*``
``side.pos_embed``                         ``visual.transformer.side_spatial_position_embeddings``
``side.taps.k.norm`` / ``.proj``           ``visual.transformer.side_lns.k`` / ``side_linears.k``
``side.blocks.k.*`` (``td_adapter``)       ``visual.transformer.side_transformer.k.*`` (``mse``)
``side.post_bn``                           ``visual.side_post_bn``
``side.sme.rgb_conv`` / ``rgb_bn``         ``visual.side_conv1`` / ``side_pre_bn3d``
``side.sme.diff_conv`` / ``diff_bn``       ``visual.side_conv1_c5`` / ``side_pre_bn3d_c5``
``head``                                   ``fc``
=========================================  ===========================================================

:func:`load_checkpoint` accepts either naming (detected from the keys), reads with
``torch.load(weights_only=True)``, and refuses partial loads: missing, unexpected or
mis-shaped tensors raise a ``ValueError`` that lists them (and names the likely cause:
another side width, class count or CLIP architecture). It also takes tdsk's own files:
a ``model.state_dict()`` and the training checkpoints of ``python -m tdsk.train``.
File reading and atomic writing are :mod:`tdsk._checkpoint_io`'s.
"""
import collections
import re
from typing import Dict, List, NamedTuple

import torch
import torch.nn as nn

from tdsk._checkpoint_io import FORMAT as TRAINING_FORMAT
from tdsk._checkpoint_io import atomic_save, load_file, load_model_state, state_dict_of

__all__ = ["official_key_map", "official_state_dict", "export_official", "load_checkpoint", "LoadReport"]

_SUBSTITUTIONS = [
    (r"^encoder\.transformer\.resblocks\.", "visual.transformer.resblocks."),
    (r"^encoder\.", "visual."),
    (r"^side\.pos_embed$", "visual.transformer.side_spatial_position_embeddings"),
    (r"^side\.taps\.(\d+)\.norm\.", r"visual.transformer.side_lns.\1."),
    (r"^side\.taps\.(\d+)\.proj\.", r"visual.transformer.side_linears.\1."),
    (r"^side\.blocks\.(\d+)\.td_adapter\.", r"visual.transformer.side_transformer.\1.mse."),
    (r"^side\.blocks\.(\d+)\.", r"visual.transformer.side_transformer.\1."),
    (r"^side\.post_bn\.", "visual.side_post_bn."),
    (r"^side\.sme\.rgb_conv\.", "visual.side_conv1."),
    (r"^side\.sme\.rgb_bn\.", "visual.side_pre_bn3d."),
    (r"^side\.sme\.diff_conv\.", "visual.side_conv1_c5."),
    (r"^side\.sme\.diff_bn\.", "visual.side_pre_bn3d_c5."),
    (r"^head\.", "fc."),
]

# Official state-dict order (docs/model.md §9): rank of each key family.
_BLOCK_ORDER = ["bn_1", "conv", "bn_2", "mlp", "attn", "ln_1", "mse"]


def _to_official(key: str) -> str:
    for pattern, repl in _SUBSTITUTIONS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"no official name for tdsk key {key!r}")


def _official_rank(key: str):
    k = key
    if k.startswith("fc."):
        return (9,)
    m = re.match(r"visual\.transformer\.(\w+?)\.(\d+)\.(\w+)", k)
    if k.startswith("visual.transformer.side_spatial_position_embeddings"):
        return (1, 0)
    if m:
        family, idx, sub = m.group(1), int(m.group(2)), m.group(3)
        fam_rank = {"side_lns": 1, "resblocks": 2, "side_linears": 3, "side_transformer": 4}[family]
        sub_rank = _BLOCK_ORDER.index(sub) if sub in _BLOCK_ORDER else len(_BLOCK_ORDER)
        return (1, fam_rank, idx, sub_rank)
    for i, prefix in enumerate(["visual.class_embedding", "visual.positional_embedding", "visual.conv1",
                                "visual.ln_pre"]):
        if k.startswith(prefix):
            return (0, i)
    for i, prefix in enumerate(["visual.side_post_bn", "visual.side_conv1.", "visual.side_pre_bn3d.",
                                "visual.side_conv1_c5", "visual.side_pre_bn3d_c5"]):
        if k.startswith(prefix):
            return (2, i)
    return (3,)


def official_key_map(model: nn.Module) -> Dict[str, str]:
    """``{tdsk_key: official_key}`` for every entry of ``model.state_dict()``."""
    return {k: _to_official(k) for k in model.state_dict()}


def official_state_dict(model: nn.Module) -> "collections.OrderedDict[str, torch.Tensor]":
    """``model``'s state dict under official names, in the official order (docs/model.md §9)."""
    if getattr(model, "variant", None) != "tds_clip":
        raise ValueError(f"this is the official TDS-CLIP format; a {getattr(model, 'variant', '?')} model has "
                         "its own (tdsk.models.export_official) or none")
    sd = model.state_dict()
    mapping = official_key_map(model)
    items = [(mapping[k], v.detach().clone()) for k, v in sd.items()]
    items.sort(key=lambda kv: _official_rank(kv[0]))  # stable: keeps the order within a family
    return collections.OrderedDict(items)


def export_official(model: nn.Module, path: str, epoch: int = 0) -> None:
    """Write ``{'epoch', 'model_state_dict'}`` in the official TDS-CLIP format (no ``module.``).

    Written atomically (temporary file, fsync, rename): a crash never leaves a torn file.
    """
    from tdsk.models.registry import family_of  # noqa: PLC0415

    fam = family_of(model)
    if fam.official_export is None:
        raise ValueError(f"model.variant={fam.variant!r} has no official checkpoint format")
    atomic_save(fam.official_export(model, epoch), path)


class LoadReport(NamedTuple):
    format: str  # "official", "tdsk" (a state dict) or "tdsk.train" (a training checkpoint)
    num_tensors: int
    path: str


def _diagnose(model: nn.Module, bad: List) -> str:
    hints = []
    for key, got, want in bad:
        if key.endswith("fc.weight") or key.endswith("head.weight"):
            if got[0] != want[0]:
                hints.append(f"checkpoint has {got[0]} classes, the model {want[0]} (set num_classes={got[0]})")
            if got[1] != want[1]:
                hints.append(f"checkpoint side width D={got[1]}, the model D={want[1]} (set side_dim={got[1]})")
        if key.endswith("positional_embedding") or key.endswith("conv1.weight") and len(got) == 4:
            hints.append(f"frozen CLIP tensors differ ({key}: {got} vs {want}): another CLIP architecture "
                         "or input size")
    return (" Likely cause: " + "; ".join(dict.fromkeys(hints)) + ".") if hints else ""


def load_checkpoint(model: nn.Module, path: str, strict: bool = True) -> LoadReport:
    """Load an official TDS-CLIP checkpoint or a tdsk one into ``model`` (in place).

    Accepted: official training checkpoints (``{'model_state_dict': ...}`` with
    ``visual.*``/``fc.*`` keys, optional ``module.``), a tdsk ``model.state_dict()``
    (bare or under ``model_state_dict``), and tdsk training checkpoints
    (``format == 'tdsk.train/1'``, whose frozen CLIP must match the model's).

    Every tensor of the model must be in the file with the same shape and the file
    must hold nothing else (``strict=False`` tolerates extra keys only); otherwise a
    ``ValueError`` lists what differs. Frozen CLIP weights in the file replace the
    model's.
    """
    obj = load_file(path)
    if isinstance(obj, dict) and obj.get("format") == TRAINING_FORMAT:
        # A tdsk training checkpoint (python -m tdsk.train): trainable weights, plus the
        # frozen CLIP's identity (its weights only when they were randomly initialised).
        try:
            load_model_state(model, obj)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path!r} (tdsk training format) does not fit this model: {exc}") from exc
        return LoadReport("tdsk.train", len(obj["model_state_dict"]), path)
    sd = state_dict_of(obj, path)
    from tdsk.models.registry import family_of  # noqa: PLC0415

    fam = family_of(model)
    if fam.official_load is not None:
        try:
            n = fam.official_load(model, sd)
        except ValueError as exc:
            raise ValueError(f"checkpoint {path!r}: {exc}") from None
        if n is not None:
            return LoadReport("official", n, path)
    own = model.state_dict()
    if fam.variant == "tds_clip" and any(k.startswith(("visual.", "fc.")) for k in sd):
        fmt = "official"
        mapping = official_key_map(model)
        inverse = {v: k for k, v in mapping.items()}
        renamed, unexpected = {}, []
        for k, v in sd.items():
            if k in inverse:
                renamed[inverse[k]] = v
            else:
                unexpected.append(k)
        missing = [mapping[k] for k in own if k not in renamed]
    else:
        fmt = "tdsk"
        renamed = {k: v for k, v in sd.items() if k in own}
        unexpected = [k for k in sd if k not in own]
        missing = [k for k in own if k not in renamed]
        mapping = {k: k for k in own}
    bad = [(mapping[k], tuple(v.shape), tuple(own[k].shape)) for k, v in renamed.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if bad:
        problems.append(f"{len(bad)} shape mismatches (file vs model): "
                        + "; ".join(f"{k}: {g} vs {w}" for k, g, w in bad[:8]))
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file: {missing[:8]}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected tensors in the file: {unexpected[:8]}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise ValueError(f"checkpoint {path!r} ({fmt} format) does not fit this model: " + " | ".join(problems)
                         + _diagnose(model, bad))
    model.load_state_dict(renamed, strict=True)
    return LoadReport(fmt, len(renamed), path)
