"""The official DiST checkpoint format (docs/dist.md §Checkpoints), in one place.

The official training code saves ``{'model_state': sd, ...}`` where ``sd`` is the whole
video model: ``backbone.base_encoder.`` + the CLIP state dict, i.e. the full CLIP (image
tower ``visual.*``, text tower ``transformer.*``, ``token_embedding.weight``,
``positional_embedding``, ``ln_final.*``, ``text_projection``, ``logit_scale``) plus the
trainable ``dist_net.*``. Released files may drop the prefix or carry ``module.``.

Key table (tdsk <- official):

===============================  =====================================================
``encoder.<k>``                  ``visual.<k>`` (conv1, class/positional embedding, ln_pre,
                                 transformer.resblocks.*)
``dist_net.<k>``                 ``dist_net.<k>`` (the same names, docs/dist.md)
``text_embeddings``              computed from the file's text tower and the class names
``logit_scale``                  ``logit_scale``
(not kept by tdsk)               ``visual.ln_post.*``, ``visual.proj`` (unused by DiST)
===============================  =====================================================
"""
from __future__ import annotations

import collections
import os
from typing import Dict, Optional

import torch
import torch.nn as nn

from tdsk.models._common import fit_problems
from tdsk.models.clip_encoder import _pretrained_tag_state_dict, load_clip_visual_state_dict
from tdsk.models.text_tower import is_text_key, class_text_embeddings, clip_text_state_dict

__all__ = ["PREFIX", "strip_prefix", "is_official", "load_official", "official_state_dict"]

PREFIX = "backbone.base_encoder."
_UNUSED_VISUAL = ("visual.ln_post.", "visual.proj")


def strip_prefix(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix(PREFIX)
        out[k] = v
    return out


def is_official(sd: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the official DiST layout."""
    return any(k.removeprefix("module.").removeprefix(PREFIX).startswith("dist_net.") for k in sd) and \
        any(k.removeprefix("module.").removeprefix(PREFIX).startswith("visual.") for k in sd)


def load_official(model: nn.Module, sd: Dict[str, torch.Tensor]) -> int:
    """Load an official DiST state dict into ``model`` (strict: every tensor of the model must
    be there with its shape, nothing else may be); returns the number of tensors read.
    The classes' text embeddings are recomputed from the file's text tower."""
    sd = strip_prefix(sd)
    own = model.state_dict()
    renamed, unexpected, text = {}, [], {}
    for k, v in sd.items():
        if k.startswith("visual."):
            if k.startswith(_UNUSED_VISUAL):
                continue
            renamed["encoder." + k[len("visual."):]] = v
        elif k.startswith("dist_net."):
            renamed[k] = v
        elif is_text_key(k):
            text[k] = v.float() if v.is_floating_point() else v
        else:
            unexpected.append(k)
    uses_text = getattr(model, "head", None) is None
    if uses_text:
        if model.class_names is None:
            raise ValueError("loading an official DiST checkpoint recomputes the classes' text embeddings: build "
                             "the model with the class names (build_model(..., class_names=[...]) or data.labels)")
        if "token_embedding.weight" not in text:
            raise ValueError("the official DiST file has no CLIP text tower (token_embedding.weight): its "
                             "classifier cannot be rebuilt")
        emb, scale = class_text_embeddings(model.config["arch"], model.class_names, None, model.config["quick_gelu"],
                                           model.config["text_prompt"], state_dict=text)
        renamed["text_embeddings"] = emb
        renamed["logit_scale"] = torch.tensor(scale)
    missing = [k for k in own if k not in renamed]
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in renamed.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    unexpected += [k for k in renamed if k not in own]
    problems = fit_problems(bad, missing, unexpected)
    if problems:
        raise ValueError("official DiST checkpoint does not fit this model: " + " | ".join(problems))
    model.load_state_dict(renamed, strict=True)
    return len(sd)


def _clip_source(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The parts of the whole CLIP that tdsk does not keep (``visual.ln_post``, ``visual.proj``,
    the text tower), from ``model.clip_pretrained`` / ``model.text_pretrained``."""
    c = model.config
    if c["clip_pretrained"] is None:
        raise ValueError("export_official of a DiST model needs model.clip_pretrained (a CLIP file or tag): the "
                         "official format holds the whole CLIP, whose text tower tdsk does not keep")
    src = str(c["clip_pretrained"])
    if os.path.exists(src):
        visual = {"visual." + k: v for k, v in load_clip_visual_state_dict(src).items()}
    else:
        visual = {k: v for k, v in _pretrained_tag_state_dict(c["arch"], src, c["quick_gelu"], full=True).items()
                  if k.startswith("visual.")}
    out = {k: v for k, v in visual.items() if k.startswith(_UNUSED_VISUAL)}
    text = clip_text_state_dict(c["arch"], c["text_pretrained"] or c["clip_pretrained"], c["quick_gelu"])
    out.update(text)
    return out


def official_state_dict(model: nn.Module, prefix: Optional[str] = PREFIX) -> "collections.OrderedDict":
    """``model`` as the official code's state dict (``backbone.base_encoder.`` + CLIP + ``dist_net``)."""
    if getattr(model, "head", None) is not None:
        raise ValueError("the official DiST format classifies with CLIP text embeddings: a model with "
                         "model.classifier=linear has no official form")
    sd = model.state_dict()
    extra = _clip_source(model)
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k.startswith("encoder."):
            out["visual." + k[len("encoder."):]] = v
    for k in sorted(extra):
        if k.startswith("visual."):
            out[k] = extra[k]
    for k, v in extra.items():
        if not k.startswith("visual.") and k != "logit_scale":
            out[k] = v
    out["logit_scale"] = sd["logit_scale"]
    for k, v in sd.items():
        if k.startswith("dist_net."):
            out[k] = v
    return collections.OrderedDict(((prefix or "") + k, v.detach().clone()) for k, v in out.items())
