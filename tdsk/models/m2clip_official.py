"""The official M2-CLIP checkpoint format (docs/m2clip.md §Checkpoints), in one place.

The release's training code saves ``{'model': sd, 'optimizer', 'lr_sched', 'loss_scaler',
'next_epoch'}`` where ``sd`` holds only what trains: every parameter of its ``CLIP`` whose name
contains ``adapter`` (the frozen CLIP comes from the CLIP weights, ``model.clip_pretrained``).

Key table (tdsk -> official; ``s`` is ``pre_attn`` or ``pre_mlp``, ``L`` the text blocks):

=========================================  =====================================================
``vision_adapters.i.s.te.<k>``             ``visual.transformer.resblocks.i.adapter_s.<k>``
``vision_adapters.i.s.ltd.<k>``            ``visual.transformer.resblocks.i.adapter_s.offset_adapter.<k>``
``frame_adapter.te.<k>``                   ``visual.t_adapter.<k>``
``linear_head.<k>``                        ``visual.adapter_fc.<k>``
``text_adapters.i.s.fc{1,2}.<k>``          ``transformer.resblocks.i.adapter_s.textad_fc{1,2}.<k>``
``decoder.s.fc{1,2}.<k>``                  ``transformer.resblocks.L.adapter_s.textad_fc{1,2}.<k>``
``mlm_head.dense`` / ``norm`` / ``decoder`` ``mlm_adapter.transform.dense`` / ``transform.LayerNorm`` / ``decoder``
``mlm_head.bias``                          ``mlm_adapter.bias``
=========================================  =====================================================

Without ``model.mlm`` tdsk has no decoder block adapters and MLM head: loading skips those
keys of the file (they never train in the release), export leaves them out.
"""
from __future__ import annotations

import collections
import re
from typing import Dict

import torch
import torch.nn as nn

from tdsk.models._common import fit_problems

__all__ = ["official_name", "official_key_map", "is_official", "load_official", "official_state_dict"]

_MLM = {"dense": "transform.dense", "norm": "transform.LayerNorm", "decoder": "decoder"}


def official_name(name: str, text_layers: int) -> str:
    """The release's name of a trainable tdsk parameter."""
    m = re.fullmatch(r"vision_adapters\.(\d+)\.(pre_attn|pre_mlp)\.(te|ltd)\.(.+)", name)
    if m:
        sub = "offset_adapter." if m[3] == "ltd" else ""
        return f"visual.transformer.resblocks.{m[1]}.adapter_{m[2]}.{sub}{m[4]}"
    m = re.fullmatch(r"text_adapters\.(\d+)\.(pre_attn|pre_mlp)\.(fc1|fc2)\.(.+)", name)
    if m:
        return f"transformer.resblocks.{m[1]}.adapter_{m[2]}.textad_{m[3]}.{m[4]}"
    m = re.fullmatch(r"decoder\.(pre_attn|pre_mlp)\.(fc1|fc2)\.(.+)", name)
    if m:
        return f"transformer.resblocks.{text_layers}.adapter_{m[1]}.textad_{m[2]}.{m[3]}"
    m = re.fullmatch(r"mlm_head\.(dense|norm|decoder)\.(.+)", name)
    if m:
        return f"mlm_adapter.{_MLM[m[1]]}.{m[2]}"
    for ours, theirs in (("frame_adapter.te.", "visual.t_adapter."), ("linear_head.", "visual.adapter_fc."),
                         ("mlm_head.bias", "mlm_adapter.bias")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise ValueError(f"no official name for {name!r}")


def official_key_map(model: nn.Module) -> Dict[str, str]:
    """``{tdsk name: official name}`` of every trainable parameter of an M2-CLIP model."""
    return {n: official_name(n, model.text.layers) for n, p in model.named_parameters() if p.requires_grad}


def is_official(sd: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the release's layout (its frame adapter's keys)."""
    return any(k.startswith("visual.t_adapter.") for k in sd)


def _dead_in_model(model: nn.Module, key: str) -> bool:
    """File keys with no tdsk tensor when ``model.mlm`` is off: the MLM head and the decoder
    block's text adapters."""
    if model.mlm_head is not None:
        return False
    return key.startswith("mlm_adapter.") or key.startswith(f"transformer.resblocks.{model.text.layers}.adapter_")


def load_official(model: nn.Module, sd: Dict[str, torch.Tensor]) -> int:
    """Load the release's trainable tensors into ``model`` (strict: each trainable tensor must be
    there with its shape, nothing else may be); returns the number of tensors read."""
    mapping = official_key_map(model)
    inverse = {v: k for k, v in mapping.items()}
    own = dict(model.named_parameters())
    renamed, unexpected, skipped = {}, [], 0
    for k, v in sd.items():
        if k in inverse:
            renamed[inverse[k]] = v
        elif _dead_in_model(model, k):
            skipped += 1
        else:
            unexpected.append(k)
    missing = [mapping[k] for k in mapping if k not in renamed]
    bad = [(mapping[k], tuple(v.shape), tuple(own[k].shape)) for k, v in renamed.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    problems = fit_problems(bad, missing, unexpected)
    if problems:
        raise ValueError("official M2-CLIP checkpoint does not fit this model: " + " | ".join(problems))
    with torch.no_grad():
        for k, v in renamed.items():
            own[k].copy_(v)
    model._text_cache.clear()
    return len(renamed) + skipped


def official_state_dict(model: nn.Module) -> "collections.OrderedDict":
    """``model``'s trainable tensors under the release's names."""
    params = dict(model.named_parameters())
    return collections.OrderedDict((o, params[k].detach().clone()) for k, o in official_key_map(model).items())
