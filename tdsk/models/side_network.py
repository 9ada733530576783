"""Side network: SME stem, per-layer taps of the frozen ViT, TDS blocks, pooled output (docs/model.md §4-7).

For side layer ``k = 0..L-1`` (docs/model.md §5), with ``z_{k+1}`` the output of frozen block ``k+1``::

    u      = Linear_k(LN_k(z_{k+1}))            [B*T, N+1, D]   ("tap", SideTap)
    cls_k  = u[:, 0];  u_p = u[:, 1:]
    x      = 0.5 * x + 0.5 * u_p                x = S0 (SME-Adapter) for k = 0
    x      = TDSBlock_k(x, cls_k, E_pos)

then ``BN_post`` and a global average over ``T * g * g`` (docs/model.md §7). The side
stream has no class token; ``E_pos`` (``[N, D]``) is shared by all blocks.

Training memory (what autograd keeps between forward and backward):

* the frozen taps ``z`` are produced without autograd and stored in the autocast dtype;
* ``side_checkpoint=False`` (and ``recompute_cheap=True``, the default): each layer runs its tap + mix + temporal branch (a) and
  its MLP (d) as recompute segments that save only their inputs (the tap ``z`` and
  the side stream ``x``); the attention (c) saves ``q, k, v``, its output and the
  log-sum-exp, never a probability matrix;
* ``side_checkpoint=s`` (``True``: two segments of ``L/2``): groups of ``s`` whole layers, and the SME
  stem, are recompute segments: only the taps, one side-stream tensor per group and
  the input video (cast to the autocast dtype under autocast) are referenced.
  Outputs and gradients are the same (bit-identical in fp32; under autocast the
  difference stem then sees bf16/fp16-rounded frames).
"""
from typing import List, Sequence

import torch
import torch.nn as nn

from tdsk.models._common import autocast_dtype, batch_norm_channels_last, recompute
from tdsk.models.sme_adapter import SMEAdapter
from tdsk.models.tds_block import TDSBlock

__all__ = ["SideNetwork", "SideTap"]


class SideTap(nn.Module):
    """``u = Linear(LN(z))``: frozen width ``C`` -> side width ``D`` (docs/model.md §5)."""

    def __init__(self, clip_width: int, side_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(clip_width)
        self.proj = nn.Linear(clip_width, side_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(z))


class SideNetwork(nn.Module):
    """``forward(video[B, T, M, 3, H, W], taps: L x [B*T, N+1, C]) -> features[B, D]``."""

    def __init__(self, clip_width: int, layers: int, side_dim: int, patch_size: int, grid_size: int,
                 num_local: int = 5, td_variant: str = "pool", td_layers: Sequence[int] = None,
                 td_reduction: int = 16, pool_kernel: int = 3, td_channel_mix: float = 0.5,
                 fusion_alpha: float = 0.5, sme_mode: str = "kernel", side_checkpoint=False,
                 num_segments: int = 8, recompute_cheap: bool = True):
        super().__init__()
        if td_layers is None:
            td_layers = range(layers)
        td_layers = set(td_layers)
        self.side_dim = side_dim
        self.grid_size = grid_size
        # True: two segments of L/2 layers (the recompute cost is one extra side forward
        # whatever the segment size; fewer segments keep fewer side-stream tensors).
        self.side_checkpoint = -(-layers // 2) if side_checkpoint is True else int(side_checkpoint)
        self.recompute_cheap = bool(recompute_cheap)
        self.sme = SMEAdapter(side_dim, patch_size, num_local, fusion_alpha, sme_mode)
        self.pos_embed = nn.Parameter(torch.empty(grid_size * grid_size, side_dim))
        nn.init.normal_(self.pos_embed, std=0.01)
        self.taps = nn.ModuleList([SideTap(clip_width, side_dim) for _ in range(layers)])
        self.blocks = nn.ModuleList([
            TDSBlock(side_dim, num_segments, td_variant if k in td_layers else "none", td_reduction,
                     pool_kernel, td_channel_mix)
            for k in range(layers)
        ])
        self.post_bn = nn.BatchNorm3d(side_dim)

    def stem(self, video: torch.Tensor) -> torch.Tensor:
        """S0 in token layout ``[B, T, N, D]``."""
        s = self.sme(video)  # [B, D, T, g, g]
        b, d, t = s.shape[:3]
        return s.permute(0, 2, 3, 4, 1).reshape(b, t, -1, d)

    def tap_and_mix(self, k: int, z: torch.Tensor, x: torch.Tensor):
        b, t, n, d = x.shape
        u = self.taps[k](z)
        x = 0.5 * x + 0.5 * u[:, 1:].reshape(b, t, n, d)
        return x, u[:, 0]

    def _layer(self, k: int, x: torch.Tensor, z: torch.Tensor, recompute_cheap: bool) -> torch.Tensor:
        block = self.blocks[k]

        def tap_mix_temporal(z_, x_):
            x_, cls_ = self.tap_and_mix(k, z_, x_)
            return block.temporal_branch(x_), cls_

        x, cls = recompute(tap_mix_temporal, z, x, enabled=recompute_cheap)
        x = block.attention_branch(x, cls, self.pos_embed)
        return recompute(block.mlp_branch, x, enabled=recompute_cheap)

    def _layers(self, start: int, last: bool, x: torch.Tensor, *zs: torch.Tensor) -> torch.Tensor:
        for i, z in enumerate(zs):
            x = self._layer(start + i, x, z, recompute_cheap=False)
        return self.pool(x) if last else x  # the last segment ends with the pooling head

    def forward(self, video: torch.Tensor, taps: List[torch.Tensor]) -> torch.Tensor:
        if len(taps) != len(self.blocks):
            raise ValueError(f"side network has {len(self.blocks)} layers but got {len(taps)} frozen taps")
        group = self.side_checkpoint
        if group:
            # The stem segment keeps its input: hand it the frames already in the
            # autocast dtype (half the bytes of fp32; the convs would cast them anyway).
            low = autocast_dtype(video.device)
            if low is not None and torch.is_grad_enabled():
                video = video.to(low)
            x = recompute(self.stem, video)
            for start in range(0, len(taps), group):
                last = start + group >= len(taps)
                x = recompute(self._layers, start, last, x, *taps[start:start + group])
            return x
        x = self.stem(video)
        for k, z in enumerate(taps):
            x = self._layer(k, x, z, recompute_cheap=self.recompute_cheap)
        return self.pool(x)

    # -- precomputed per-frame taps (tdsk.timeline): LN + Linear of a tap act on each frame's tokens
    # alone, so u_k = taps[k](z_k) can be computed once per frame, like z_k itself.

    def project_taps(self, taps: List[torch.Tensor]) -> List[torch.Tensor]:
        """``u_k = Linear_k(LN_k(z_k))`` for every layer: ``L x [F, N+1, C] -> L x [F, N+1, D]``
        (per frame; docs/model.md §5 step 1)."""
        if len(taps) != len(self.blocks):
            raise ValueError(f"side network has {len(self.blocks)} layers but got {len(taps)} frozen taps")
        return [self.taps[k](z) for k, z in enumerate(taps)]

    def forward_projected(self, video: torch.Tensor, projected: List[torch.Tensor]) -> torch.Tensor:
        """``forward`` with the taps already projected (:meth:`project_taps`): ``[B, D]``.
        Same ops as ``forward`` without recompute segments (inference)."""
        if len(projected) != len(self.blocks):
            raise ValueError(f"side network has {len(self.blocks)} layers but got {len(projected)} projected taps")
        x = self.stem(video)
        for k, u in enumerate(projected):
            b, t, n, d = x.shape
            block = self.blocks[k]
            x = block.temporal_branch(0.5 * x + 0.5 * u[:, 1:].reshape(b, t, n, d))
            x = block.attention_branch(x, u[:, 0], self.pos_embed)
            x = block.mlp_branch(x)
        return self.pool(x)

    def tokens(self, video: torch.Tensor, taps: List[torch.Tensor]) -> torch.Tensor:
        """The side stream after the last TDS block, ``[B, T, N, D]`` (before ``BN_post`` and the
        pooling; ``forward == pool(tokens)``). No recompute segments: for inspection (Grad-CAM
        in :mod:`tdsk.explain`), not for memory-lean training."""
        if len(taps) != len(self.blocks):
            raise ValueError(f"side network has {len(self.blocks)} layers but got {len(taps)} frozen taps")
        x = self.stem(video)
        for k, z in enumerate(taps):
            x = self._layer(k, x, z, recompute_cheap=False)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``BN_post`` then the global average over ``T * g * g`` (docs/model.md §7): ``[B, D]``."""
        return batch_norm_channels_last(self.post_bn, x).mean(dim=(1, 2))
