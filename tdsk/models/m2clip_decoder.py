"""M2-CLIP's cross-modal decoder and masked-language-modelling head (Wang et al., AAAI 2024,
arXiv 2401.11649, Sec. 3.3 "multimodal" branch, Fig. 2(a); docs/m2clip.md §MLM).

* :class:`CrossModalDecoder`: one more text block, a frozen copy of the text tower's last
  block, whose attention runs from the text tokens ``[B, ctx, W]`` to the video's frame
  embeddings ``[B, T, E]`` (keys and values through the same ``ln_1``; no mask), with the
  text adapters of its slots;
* :class:`MLMHead`: BERT's prediction head (dense -> GELU -> LayerNorm, eps 1e-12) and a
  decoder to the class names' word vocabulary;
* :func:`mask_prompts`: the masked prompts and their word labels.

The release trains this branch with probability 0 (docs/m2clip.md): tdsk builds it only with
``model.mlm: true``.
"""
from __future__ import annotations

import copy
import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.ops.attention import attention

__all__ = ["CrossModalDecoder", "MLMHead", "word_vocabulary", "mask_prompts"]


class CrossModalDecoder(nn.Module):
    """``forward(text[B, ctx, W], frames[B, T, W]) -> [B, ctx, W]`` (a residual block)."""

    def __init__(self, last_block: nn.Module, pre_attn: Optional[nn.Module] = None,
                 pre_mlp: Optional[nn.Module] = None):
        super().__init__()
        self.block = copy.deepcopy(last_block)
        for p in self.block.parameters():
            p.requires_grad_(False)
        self.block.eval()
        self.pre_attn = pre_attn
        self.pre_mlp = pre_mlp

    def train(self, mode: bool = True):
        super().train(mode)
        self.block.eval()
        return self

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        blk = self.block
        if frames.shape[-1] != x.shape[-1]:
            raise ValueError(f"CrossModalDecoder: frame embeddings of width {frames.shape[-1]} cannot attend "
                             f"with text tokens of width {x.shape[-1]}")
        if self.pre_attn is not None:
            x = self.pre_attn(x)
        attn = blk.attn
        c, h = x.shape[-1], attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(blk.ln_1(x), w[:c], b[:c])
        kv = F.linear(blk.ln_1(frames.to(x.dtype)), w[c:], b[c:])
        k, v = kv.split(c, dim=-1)
        a = attention(q.unflatten(-1, (h, -1)), k.unflatten(-1, (h, -1)), v.unflatten(-1, (h, -1)))
        x = x + blk.ls_1(attn.out_proj(a.flatten(-2)))
        if self.pre_mlp is not None:
            x = self.pre_mlp(x)
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


class MLMHead(nn.Module):
    """``[.., W] -> [.., V]`` word logits (BERT's prediction head)."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        for m in (self.dense, self.decoder):
            nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x)))) + self.bias


def word_vocabulary(prompts: Sequence[str]) -> Dict[str, int]:
    """``{word: index}`` of the lower-case words of ``prompts`` (sorted)."""
    return {w: i for i, w in enumerate(sorted({w for p in prompts for w in p.lower().split()}))}


def mask_prompts(prompts: Sequence[str], vocab: Dict[str, int], context_length: int, rate: float = 0.2,
                 rng: Optional[random.Random] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, ctx], labels [B, ctx])``: in each prompt ``max(1, round(rate * words))``
    random words are replaced by the word "mask" (one BPE token; CLIP has no mask token) whose
    position is labelled with the word's vocabulary index; every other position is -100."""
    from open_clip.tokenizer import _tokenizer  # noqa: PLC0415

    rng = rng or random
    sot, eot = _tokenizer.sot_token_id, _tokenizer.eot_token_id
    mask_ids = _tokenizer.encode("mask")
    tokens = torch.zeros(len(prompts), context_length, dtype=torch.long)
    labels = torch.full((len(prompts), context_length), -100, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        words = prompt.lower().split()
        masked = set(rng.sample(range(len(words)), max(1, round(len(words) * rate))))
        ids: List[int] = [sot]
        lab: List[int] = [-100]
        for j, word in enumerate(words):
            if j in masked:
                ids += mask_ids
                lab += [vocab.get(word, 0)] + [-100] * (len(mask_ids) - 1)
            else:
                enc = _tokenizer.encode(word)
                ids += enc
                lab += [-100] * len(enc)
        ids, lab = (ids + [eot])[:context_length], (lab + [-100])[:context_length]
        ids[-1] = eot if len(ids) == context_length else ids[-1]
        tokens[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
    return tokens, labels
