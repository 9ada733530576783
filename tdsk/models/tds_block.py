"""TDS block: the side network's block ("AttnCBlock" with a TD-Adapter) (docs/model.md §6; paper Fig. 3).

The side stream lives in the token layout ``x: [B, T, N, D]`` (batch-first, row-major
patches), which is the volume ``(B, D, T, g, g)`` channels-last: BatchNorm3d is a
per-channel norm over the other axes, a 1x1x1 Conv3d is a matmul over ``D``. One
block, in the exact official order:

(a) temporal conv branch, BN pre-normed, with the TD-Adapter (docs/model.md §6)::

        y = Conv1x1(DWConv_t(Conv1x1(BN_1(x))))        no activation; DWConv_t: (3,1,1), zero pad
        x = x + TD(y)                                    TD: tdsk.models.td_adapter

(b) CLS-token shift (docs/model.md §6): the tapped class token ``cls_k`` (not in the
    residual stream) takes channels ``[0, D/2)`` from frame ``t+1`` and ``[D/2, D)``
    from frame ``t-1``, zero-filled at the clip ends;

(c) attention, patch queries over ``[cls + patches]`` (docs/model.md §6)::

        xt = [shift(cls_k); x + E_pos]                   E_pos only on this temporary
        x  = x + OutProj(Attn(q = LN_1(xt)[1:], k = v = LN_1(xt)))

    through :func:`tdsk.ops.attention.attention` (xformers/SDPA), ``D // 64`` heads;

(d) MLP, BN pre-normed, exact (erf) GELU (docs/model.md §6)::

        x = x + FC2(GELU(FC1(BN_2(x))))

``td_variant='none'`` drops the TD-Adapter (``x = x + y``, the plain conv stack of
paper Tab. 4). Parameter names follow the official block (``bn_1, conv.0-2, mse,
bn_2, mlp.fc1/fc2, attn, ln_1``; the adapter is ``td_adapter`` here, ``mse`` there).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.models._common import batch_norm_channels_last, recompute
from tdsk.models.td_adapter import TDAdapter
from tdsk.ops.attention import attention

__all__ = ["TDSBlock", "SideAttention", "SideMLP", "shift_class_tokens", "temporal_depthwise_conv"]


def shift_class_tokens(cls: torch.Tensor, num_segments: int) -> torch.Tensor:
    """CLS-token shift (docs/model.md §6). ``cls: [B*T, D]`` (b-major, t-minor) -> same shape.

    ``out[t, :D//2] = in[t+1, :D//2]`` (0 at ``t = T-1``); ``out[t, D//2:] = in[t-1, D//2:]``
    (0 at ``t = 0``). Never crosses the video boundary of the ``B*T`` axis.
    """
    bt, d = cls.shape
    fold = d // 2
    c = cls.view(bt // num_segments, num_segments, d)
    zero_a = c.new_zeros(c.shape[0], 1, fold)
    zero_b = c.new_zeros(c.shape[0], 1, d - fold)
    from_next = torch.cat([c[:, 1:, :fold], zero_a], dim=1)
    from_prev = torch.cat([zero_b, c[:, :-1, fold:]], dim=1)
    return torch.cat([from_next, from_prev], dim=2).view(bt, d)


def temporal_depthwise_conv(y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Depthwise Conv3d kernel ``(k,1,1)``, zero padding ``k//2``, on ``y: [B, T, N, D]``.

    ``weight``: the Conv3d weight ``[D, 1, k, 1, 1]``; ``out[t] = sum_i w_i * y[t - k//2 + i] + b``.
    """
    k = weight.shape[2]
    w = weight.view(weight.shape[0], k).to(y.dtype)
    frames = y.shape[1]
    half = k // 2
    out = y * w[:, half]
    if bias is not None:
        out = out + bias.to(y.dtype)
    pieces = []
    for i in range(k):
        shift = i - half  # tap i reads frame t + shift
        if shift == 0 or abs(shift) >= frames:
            continue
        if shift > 0:
            term = F.pad(y[:, shift:] * w[:, i], (0, 0, 0, 0, 0, shift))
        else:
            term = F.pad(y[:, :shift] * w[:, i], (0, 0, 0, 0, -shift, 0))
        pieces.append(term)
    for term in pieces:
        out = out + term
    return out


class SideAttention(nn.Module):
    """Patch queries over ``[cls + patches]`` (docs/model.md §6); official ``nn.MultiheadAttention`` keys.

    ``forward(n: [B*T, N+1, D]) -> [B*T, N, D]``: ``q`` from ``n[:, 1:]``, ``k, v`` from
    ``n``; packed ``in_proj`` rows ``[q; k; v]``; contiguous ``D/h`` head chunks; scale
    ``(D/h)^-1/2``; softmax over the ``N+1`` keys; ``out_proj``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"side width {dim} is not divisible by its {heads} heads")
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        bt, tokens, d = n.shape
        h, dh = self.heads, d // self.heads
        q = F.linear(n[:, 1:], self.in_proj_weight[:d], self.in_proj_bias[:d]).view(bt, tokens - 1, h, dh)
        kv = F.linear(n, self.in_proj_weight[d:], self.in_proj_bias[d:]).view(bt, tokens, 2, h, dh)
        o = attention(q, kv[:, :, 0], kv[:, :, 1], scale=1.0 / math.sqrt(dh))
        return self.out_proj(o.reshape(bt, tokens - 1, d))


class SideMLP(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU, hidden ``4D`` (official ``CMlp`` keys)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TDSBlock(nn.Module):
    """One TDS block. ``forward(x[B, T, N, D], cls[B*T, D], pos[N, D]) -> x``.

    Args:
        dim: side width ``D``; heads ``D // 64`` (at least 1).
        num_segments: ``T`` (for the CLS shift).
        td_variant: ``'pool'`` (paper), ``'conv'``, ``'direct'`` or ``'none'``.
        td_reduction, pool_kernel, td_channel_mix: TD-Adapter settings.
    """

    def __init__(self, dim: int, num_segments: int, td_variant: str = "pool", td_reduction: int = 16,
                 pool_kernel: int = 3, td_channel_mix: float = 0.5):
        super().__init__()
        self.dim = dim
        self.num_segments = num_segments
        self.bn_1 = nn.BatchNorm3d(dim)
        self.conv = nn.Sequential(
            nn.Conv3d(dim, dim, 1),
            nn.Conv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0), groups=dim),
            nn.Conv3d(dim, dim, 1),
        )
        if td_variant == "none":
            self.td_adapter = None
        else:
            self.td_adapter = TDAdapter(dim, td_reduction, pool_kernel, td_channel_mix, td_variant)
        self.bn_2 = nn.BatchNorm3d(dim)
        self.mlp = SideMLP(dim, 4 * dim)
        self.attn = SideAttention(dim, max(1, dim // 64))
        self.ln_1 = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official side-block init (docs/model.md §8); the rest keeps PyTorch defaults."""
        d = self.dim
        nn.init.normal_(self.mlp.fc1.weight, std=(2 * d) ** -0.5)
        nn.init.normal_(self.mlp.fc2.weight, std=d ** -0.5 * 24 ** -0.5)
        nn.init.normal_(self.attn.in_proj_weight, std=d ** -0.5)
        nn.init.normal_(self.attn.out_proj.weight, std=d ** -0.5 * 24 ** -0.5)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.zeros_(self.attn.out_proj.bias)

    # (a) ---------------------------------------------------------------
    def temporal_branch(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = self.conv
        y = batch_norm_channels_last(self.bn_1, x)
        y = F.linear(y, c0.weight.flatten(1), c0.bias)
        y = temporal_depthwise_conv(y, c1.weight, c1.bias)
        y = F.linear(y, c2.weight.flatten(1), c2.bias)
        if self.td_adapter is not None:
            y = self.td_adapter(y)
        return x + y

    # (b) + (c) ---------------------------------------------------------
    def attention_branch(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        patches = (x + pos).reshape(b * t, n, d)
        cls = shift_class_tokens(cls, t).to(patches.dtype)
        xt = torch.cat([cls.unsqueeze(1), patches], dim=1)
        o = self.attn(self.ln_1(xt))
        return x + o.view(b, t, n, d)

    # (d) ---------------------------------------------------------------
    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(batch_norm_channels_last(self.bn_2, x))

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor,
                recompute_cheap: bool = False) -> torch.Tensor:
        """``recompute_cheap``: run (a) and (d) as recompute segments (saves memory, see
        :mod:`tdsk.models.side_network`)."""
        x = recompute(self.temporal_branch, x, enabled=recompute_cheap)
        x = self.attention_branch(x, cls, pos)
        return recompute(self.mlp_branch, x, enabled=recompute_cheap)
