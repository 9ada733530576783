"""Frozen CLIP towers with adapters *inside* their blocks (docs/adapters.md).

TDS-CLIP and DiST read the frozen ViT's block outputs from the side
(:class:`~tdsk.models.clip_encoder.FrozenCLIPEncoder`, no autograd through it). The
adapter families -- M2-CLIP (Wang et al., AAAI 2024, the TED-Adapter of Fig. 2) and MSTA
(Chen et al., CVPR 2025, the shared adapters of its Fig. 2) -- change the tokens *inside*
the frozen blocks instead, so their gradients must flow back through the frozen weights.

This module is that machinery, shared by the families:

* :func:`adapted_block_forward`: one CLIP residual block with three adapter slots,
  ``pre_attn`` (before the attention branch), ``pre_mlp`` (before the MLP branch) and
  ``post_mlp`` (after the MLP residual). Each slot is a callable ``tokens -> tokens`` (the
  adapter owns its residual);
* :class:`AdaptedVisionTower` / :class:`AdaptedTextTower`: open_clip's towers, frozen
  (``requires_grad=False``, eval mode), run block by block with the slots a family
  passes in. Autograd runs through the frozen weights (their gradients are never
  computed or stored: only the activations the adapters' input gradients need);
* ``checkpoint=True``: activation checkpointing per block (``torch.utils.checkpoint``,
  non-reentrant) -- the memory of this family is the frozen tower's activations, which
  checkpointing trades for a second forward of each block;
* :class:`ClassTextCache`: class-text embeddings cached per class list (and per version
  of the trainable weights they depend on), so evaluation runs the text tower once.

Weights: the same sources as the other families (``model.clip_pretrained``: an open_clip
tag, a local CLIP file or ``None`` for random init). The same tag or file gives both
towers (:func:`tdsk.models.text_tower.clip_text_state_dict` reads the text half of it).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from tdsk._logging import log_once
from tdsk.models.clip_encoder import FrozenCLIPEncoder, _is_plain_block
from tdsk.models.text_tower import build_text_tower, clip_text_state_dict
from tdsk.ops.attention import attention

__all__ = ["SLOTS", "adapted_block_forward", "AdaptedVisionTower", "AdaptedTextTower", "ClassTextCache",
           "tokenize"]

#: The adapter slots of a block, in the order they run.
SLOTS = ("pre_attn", "pre_mlp", "post_mlp")

Slots = Optional[Mapping[str, Callable[[torch.Tensor], torch.Tensor]]]


def _check_slots(slots: Slots) -> None:
    bad = [k for k in (slots or {}) if k not in SLOTS]
    if bad:
        raise ValueError(f"unknown adapter slot(s) {bad}: use {SLOTS}")


def adapted_block_forward(block: nn.Module, x: torch.Tensor, slots: Slots = None,
                          attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One CLIP residual block on batch-first tokens ``x: [B, L, C]`` with adapter slots.

    ``x <- pre_attn(x); x <- x + MHA(LN1(x)); x <- pre_mlp(x); x <- x + MLP(LN2(x));
    x <- post_mlp(x)`` (absent slots are skipped). ``attn_mask``: an additive ``[L, L]``
    mask (the text tower's causal mask). Attention of a plain block goes through
    :func:`tdsk.ops.attention.attention` (SDPA / xformers, no probability matrix kept)
    when there is no mask.
    """
    slots = slots or {}
    if slots.get("pre_attn") is not None:
        x = slots["pre_attn"](x)
    h = block.ln_1(x)
    if attn_mask is None and _is_plain_block(block):
        attn = block.attn
        b, length, width = h.shape
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, length, 3, attn.num_heads, -1)
        a = attn.out_proj(attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, length, width))
    else:
        a = block.attention(q_x=h, attn_mask=attn_mask)
    x = x + block.ls_1(a)
    if slots.get("pre_mlp") is not None:
        x = slots["pre_mlp"](x)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    if slots.get("post_mlp") is not None:
        x = slots["post_mlp"](x)
    return x


def _run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, slots: Optional[Sequence[Slots]],
                attn_mask: Optional[torch.Tensor], checkpoint: bool) -> torch.Tensor:
    if slots is not None and len(slots) != len(blocks):
        raise ValueError(f"adapter slots for {len(slots)} blocks, the tower has {len(blocks)}")
    for i, block in enumerate(blocks):
        s = slots[i] if slots is not None else None
        _check_slots(s)
        if checkpoint and torch.is_grad_enabled():
            x = cp.checkpoint(adapted_block_forward, block, x, s, attn_mask, use_reentrant=False)
        else:
            x = adapted_block_forward(block, x, s, attn_mask)
    return x


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class AdaptedVisionTower(FrozenCLIPEncoder):
    """The frozen open_clip ViT (with ``ln_post`` and ``proj``) run with adapter slots.

    ``forward(frames[N, 3, H, W], slots=None) -> tokens [N, 1+P, C]`` (the last block's
    output; ``slots``: one mapping per block, see :func:`adapted_block_forward`). Unlike
    the parent class it keeps autograd on, so adapters inside the blocks get gradients;
    the tower's own parameters stay frozen. :meth:`head` maps the class token to CLIP's
    embedding space. Arguments as :class:`FrozenCLIPEncoder`, plus ``checkpoint``.
    """

    def __init__(self, arch: str, pretrained: Optional[str] = None, quick_gelu: bool = True,
                 image_size: Optional[int] = None, checkpoint: bool = False):
        super().__init__(arch, pretrained, quick_gelu, image_size, keep_head=True)
        self.checkpoint = bool(checkpoint)

    def forward(self, frames: torch.Tensor, slots: Optional[Sequence[Slots]] = None) -> torch.Tensor:  # type: ignore[override]
        return _run_blocks(self.transformer.resblocks, self.embed(frames), slots, None, self.checkpoint)

    def head(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        """``proj(ln_post(cls))``: ``[N, C] -> [N, E]``."""
        x = self.ln_post(cls_tokens)
        return x @ self.proj.to(x.dtype) if self.proj is not None else x


def tokenize(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """CLIP's BPE tokens ``[K, context_length]`` (open_clip's tokenizer; long texts are cut)."""
    import open_clip  # noqa: PLC0415

    return open_clip.tokenize([str(t) for t in texts], context_length=context_length)


class AdaptedTextTower(nn.Module):
    """CLIP's text transformer (open_clip), frozen, run with adapter slots.

    ``forward(tokens[K, ctx], slots=None) -> (features [K, E], tokens_out [K, ctx, W])``:
    ``features`` is CLIP's text embedding (``ln_final`` at the end-of-text token, then
    ``text_projection``), ``tokens_out`` the last block's output before ``ln_final`` (for
    a family's decoder). Weights: :func:`tdsk.models.text_tower.clip_text_state_dict`
    (``pretrained`` as ``model.clip_pretrained``; ``state_dict`` overrides it).
    ``logit_scale`` is the file's (log space) or CLIP's initial one.
    """

    def __init__(self, arch: str, pretrained: Optional[str] = None, quick_gelu: bool = True,
                 checkpoint: bool = False, key: str = "model.clip_pretrained",
                 state_dict: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__()
        from tdsk.models.text_tower import DEFAULT_LOGIT_SCALE  # noqa: PLC0415

        sd = state_dict if state_dict is not None else clip_text_state_dict(arch, pretrained, quick_gelu, key)
        if sd is None:
            log_once(f"clip-text-random-{arch}", f"CLIP text tower {arch}: random initialisation (no text weights)",
                     logging.INFO)
        tower = build_text_tower(arch, quick_gelu, sd)
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "pool_type", "argmax") != "argmax":
            raise ValueError(f"{arch}: the adapter families need CLIP's plain text tower (end-of-text pooling, "
                             "no class token)")
        if "attn_mask" in tower._buffers:  # CLIP's constant causal mask (-inf): rebuilt, never saved
            tower._non_persistent_buffers_set.add("attn_mask")
        self.tower = tower
        self.context_length = int(tower.positional_embedding.shape[0])
        self.width = int(tower.positional_embedding.shape[1])
        self.layers = len(tower.transformer.resblocks)
        self.embed_dim = int(tower.text_projection.shape[-1])
        self.checkpoint = bool(checkpoint)
        self.logit_scale_init = float(sd["logit_scale"]) if sd is not None and "logit_scale" in sd \
            else DEFAULT_LOGIT_SCALE
        _freeze(self)

    def train(self, mode: bool = True):  # frozen: always eval (no dropout in CLIP, but keep the promise)
        return super().train(False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.tower.transformer.resblocks

    def embed(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token + position embeddings ``[K, ctx, W]`` and the causal mask."""
        return self.tower._embeds(tokens)

    def project(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``text_projection(ln_final(x)[eot])``: ``[K, ctx, W] -> [K, E]``."""
        x = self.tower.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.tower.text_projection.to(x.dtype)

    def forward(self, tokens: torch.Tensor, slots: Optional[Sequence[Slots]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.embed(tokens)
        x = _run_blocks(self.blocks, x, slots, mask, self.checkpoint)
        return self.project(x, tokens), x

    def encode(self, texts: Sequence[str], slots: Optional[Sequence[Slots]] = None, batch: int = 256
               ) -> torch.Tensor:
        """``[K, E]`` text embeddings of ``texts`` (not normalised), in batches of ``batch``."""
        device = self.tower.positional_embedding.device
        out: List[torch.Tensor] = []
        for i in range(0, len(texts), batch):
            out.append(self(tokenize(texts[i:i + batch], self.context_length).to(device), slots)[0])
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=device)


class ClassTextCache:
    """Class-text embeddings cached per class list and per version of the weights they depend on.

    ``get(key, params, compute)``: ``compute()`` runs when ``key`` (e.g. the class names and
    prompt) or any parameter of ``params`` changed since the last call (an optimiser step or
    ``load_state_dict`` bumps a tensor's version counter), or when autograd is on (training
    needs a graph); otherwise the cached tensor is returned. One entry per key, at most
    ``size`` keys.
    """

    def __init__(self, size: int = 4):
        self.size = int(size)
        self._entries: Dict[Hashable, Tuple[tuple, torch.Tensor]] = {}

    @staticmethod
    def _stamp(params: Sequence[torch.Tensor]) -> tuple:
        # the weights (identity, version, device, dtype) and the autocast state: embeddings
        # computed under bf16 autocast are not the fp32 ones
        amp = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda"))
        return tuple((id(p), p._version, p.device, p.dtype) for p in params) + amp

    def clear(self) -> None:
        self._entries.clear()

    def get(self, key: Hashable, params: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]
            ) -> torch.Tensor:
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return compute()
        stamp = self._stamp(params)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with torch.no_grad():
            value = compute()
        if key not in self._entries and len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (stamp, value)
        return value
