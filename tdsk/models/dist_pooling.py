"""DiST's adaptive spatial/temporal pooling (Qing et al., ICCV 2023, Sec. 3.3; docs/dist.md
§Architecture): learnable query tokens gather the integration tokens by cross-attention,
first one query per CLIP frame over that frame's tokens, then one query per video over the
``T'`` frame tokens (plus a position embedding). Each step adds an MLP, pre-LayerNorm.

Attention runs through :func:`tdsk.ops.attention.attention`; the projections are held by an
``nn.MultiheadAttention`` (``in_proj_weight``, ``out_proj``) so the official names hold.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.models.dist_blocks import _mlp
from tdsk.ops.attention import attention

__all__ = ["CrossAttention", "AdaptivePooling"]


class CrossAttention(nn.Module):
    """``MHA(LN(query), LN(memory), LN(memory))`` on sequence-first ``query[Lq, N, C]`` and
    ``memory[Lk, N, C]`` (one LayerNorm for both, as in the paper's pooling blocks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, dim // 64)
        self.ln_1 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        a = self.attn
        c, heads = query.shape[-1], a.num_heads
        w, bias = a.in_proj_weight, a.in_proj_bias
        q = F.linear(self.ln_1(query), w[:c], bias[:c])
        kv = F.linear(self.ln_1(memory), w[c:], bias[c:])

        def split(t):  # [L, N, C] -> [N, L, h, C/h]
            return t.transpose(0, 1).unflatten(-1, (heads, c // heads))

        o = attention(split(q), split(kv[..., :c]), split(kv[..., c:]))  # [N, Lq, h, d]
        return a.out_proj(o.flatten(2).transpose(0, 1))


class AdaptivePooling(nn.Module):
    """One pooling block: ``spatial`` queries ``[1, b*T', I]`` attend to the tokens
    ``[L, b*T', I]`` of their frame; the ``video`` query ``[1, b, I]`` attends to the ``T'``
    updated frame queries. Returns both updated queries."""

    def __init__(self, dim: int, frames: int, mlp_ratio: int = 4):
        super().__init__()
        self.frames = int(frames)
        self.temporal_transformer = CrossAttention(dim)
        self.positional_embedding = nn.Parameter(torch.empty(1, frames, dim))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.output_map_cls_token = _mlp(dim, dim * mlp_ratio)
        self.ln_out_temp_cls_token = nn.LayerNorm(dim)
        self.spatial_transformer = CrossAttention(dim)
        self.output_map_spatial_cls_token = _mlp(dim, dim * mlp_ratio)
        self.ln_out_spat_cls_token = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, video_query: torch.Tensor, frame_query: torch.Tensor):
        bt = tokens.shape[1]
        b = bt // self.frames
        frame_query = frame_query + self.spatial_transformer(frame_query, tokens)
        frame_query = frame_query + self.output_map_spatial_cls_token(self.ln_out_spat_cls_token(frame_query))
        frames = frame_query[0].reshape(b, self.frames, -1) + self.positional_embedding.to(tokens.dtype)
        frames = frames.transpose(0, 1)                              # [T', b, I]
        video_query = video_query + self.temporal_transformer(video_query, frames)
        video_query = video_query + self.output_map_cls_token(self.ln_out_temp_cls_token(video_query))
        return video_query, frame_query
