"""CLIP's text tower as a frozen classifier: class names -> text embeddings, computed once.

A text-classifier model (DiST, docs/dist.md §Classifier) scores a video embedding against
the CLIP text embedding of every class name, ``logits = exp(s) * cos(v, t_k)``. The names
change only when the classes do, so :func:`class_text_embeddings` runs open_clip's text
tower (and its BPE tokenizer, which ship with open_clip) once and the model keeps the
``[K, E]`` result as a buffer: inference never needs the text tower.

Weights: the same sources as the frozen image tower (``model.clip_pretrained``): an open_clip
tag, a local CLIP file (OpenAI / open_clip state dict or TorchScript: the text tensors
``token_embedding.weight``, ``positional_embedding``, ``transformer.*``, ``ln_final.*``,
``text_projection`` and ``logit_scale``), or ``None`` (random init with a fixed seed, for tests
and the demo: the same names give the same embeddings on every call). tdsk's tiny
test ViTs get a tiny text tower (:data:`TINY_TEXT_CFG`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tdsk._checkpoint_io import read_state_dict
from tdsk._logging import log_once
from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS, _pretrained_tag_state_dict, vision_config
from tdsk.schema import ConfigError

__all__ = ["placeholder_text_embeddings", "text_embeddings_deferred",
           "TINY_TEXT_CFG", "text_config", "clip_text_state_dict", "build_text_tower", "encode_texts",
           "class_text_embeddings", "TEXT_KEYS", "is_text_key"]

# A one-layer text tower of width 64 for tdsk's tiny ViTs (CPU tests, the demo).
TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
# the top-level names of CLIP's text tower in OpenAI / open_clip files
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
             "logit_scale")
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature
# seed of the random text tower used without text weights (tests, the demo): one fixed tower, so
# that the embeddings of a name do not depend on when or where they are computed
RANDOM_TEXT_SEED = 0
_DEFERRED = [0]


@contextlib.contextmanager
def placeholder_text_embeddings():
    """Inside: :func:`class_text_embeddings` returns zeros of the right shape without running
    the text tower. For rebuilding a model whose ``text_embeddings`` buffer is loaded right
    after from a checkpoint or model folder (no text weights or class names needed)."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1


def text_embeddings_deferred() -> bool:
    """Whether :func:`placeholder_text_embeddings` is active."""
    return _DEFERRED[0] > 0


def text_config(arch: str) -> Tuple[int, dict]:
    """``(embed_dim, text_cfg)`` of an open_clip model name or a tdsk tiny ViT."""
    if arch in TDSK_VIT_CONFIGS:
        cfg = TDSK_VIT_CONFIGS[arch]
        return int(cfg["embed_dim"]), dict(cfg.get("text_cfg", TINY_TEXT_CFG))
    import open_clip  # noqa: PLC0415

    vision_config(arch)  # the same "unknown architecture" error as the image tower
    cfg = open_clip.get_model_config(arch)
    return int(cfg["embed_dim"]), dict(cfg["text_cfg"])


def is_text_key(k: str) -> bool:
    """Whether a top-level CLIP state-dict key belongs to the text tower."""
    return k.startswith(TEXT_KEYS)


def clip_text_state_dict(arch: str, pretrained: Optional[str], quick_gelu: bool = True,
                         key: str = "model.clip_pretrained") -> Optional[Dict[str, torch.Tensor]]:
    """The text-tower tensors (top-level CLIP names) of ``pretrained``, or ``None`` for random init.

    Raises :class:`ConfigError` (one line, naming ``key``) for a missing file, a file without
    a text tower, or a tag that needs the model hub on an offline machine.
    """
    if pretrained is None:
        return None
    if os.path.exists(str(pretrained)):
        sd = read_state_dict(str(pretrained), what="CLIP weights", torchscript=True)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        text = {k: v for k, v in sd.items() if is_text_key(k)}
        if "token_embedding.weight" not in text:
            raise ConfigError(f"{key}={pretrained!r} has no CLIP text tower (no token_embedding.weight; a vision-only "
                              "file?): the text classifier needs a whole CLIP file, or set model.classifier=linear")
        return {k: (v.float() if v.is_floating_point() else v) for k, v in text.items()}
    if os.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ConfigError(f"{key}: no such file {pretrained!r}")
    sd = _pretrained_tag_state_dict(arch, str(pretrained), quick_gelu, full=True)
    return {k: v for k, v in sd.items() if is_text_key(k)}


def build_text_tower(arch: str, quick_gelu: bool = True, state_dict: Optional[Dict[str, torch.Tensor]] = None
                     ) -> nn.Module:
    """open_clip's ``TextTransformer`` for ``arch`` in eval mode, frozen, with ``state_dict``'s
    tensors (strict) or random ones."""
    from open_clip.model import _build_text_tower  # noqa: PLC0415

    embed_dim, cfg = text_config(arch)
    tower = _build_text_tower(embed_dim, cfg, quick_gelu=quick_gelu)
    if state_dict is not None:
        own = tower.state_dict()
        sd = {k: v for k, v in state_dict.items() if k in own}
        missing = [k for k in own if k not in sd]
        bad = [k for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or bad:
            raise ConfigError(f"the CLIP text weights do not fit {arch}'s text tower: "
                              f"{len(missing)} missing (e.g. {missing[:3]}), {len(bad)} of another shape "
                              f"(e.g. {[(k, tuple(sd[k].shape)) for k in bad[:3]]})")
        tower.load_state_dict(sd, strict=True)
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower.eval()


def encode_texts(tower: nn.Module, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """``[K, E]`` float32 text embeddings (not normalised) of ``texts``, in order."""
    import open_clip  # noqa: PLC0415

    ctx = int(tower.positional_embedding.shape[0])
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            tokens = open_clip.tokenize(list(texts[i:i + batch]), context_length=ctx)
            out.append(tower(tokens).float())
    return torch.cat(out) if out else torch.zeros(0, int(tower.text_projection.shape[-1]))


def class_text_embeddings(arch: str, class_names: Sequence[str], pretrained: Optional[str], quick_gelu: bool = True,
                          prompt: str = "{}", key: str = "model.clip_pretrained",
                          state_dict: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, float]:
    """``(embeddings[K, E], logit_scale)`` of ``prompt.format(name)`` for every class name.

    ``state_dict`` (the text tensors, e.g. of an official checkpoint) takes the place of
    ``pretrained``. ``logit_scale`` is the file's (log-space, as in CLIP) or CLIP's initial one.
    """
    names = [str(n) for n in class_names]
    if text_embeddings_deferred():
        return torch.zeros(len(names), text_config(arch)[0]), DEFAULT_LOGIT_SCALE
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise ConfigError(f"class names {blank[:5]} are blank: the text classifier needs a name per class")
    sd = state_dict if state_dict is not None else clip_text_state_dict(arch, pretrained, quick_gelu, key)
    if sd is None:
        log_once(f"clip-text-random-{arch}", f"CLIP text tower {arch}: random initialisation (no text weights)",
                 logging.INFO)
    if sd is None:  # random weights, the same on every call (a reloaded model recomputes the same embeddings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_TEXT_SEED)
            tower = build_text_tower(arch, quick_gelu, sd)
    else:
        tower = build_text_tower(arch, quick_gelu, sd)
    emb = encode_texts(tower, [prompt.format(n) for n in names])
    scale = float(sd["logit_scale"]) if sd is not None and "logit_scale" in sd else DEFAULT_LOGIT_SCALE
    return emb, scale
