"""DiST's temporal encoder, integration branch and the two bridges between them
(Qing et al., ICCV 2023, Sec. 3.2-3.3 and Fig. 2; docs/dist.md §Architecture).

Layouts (``b`` videos, ``T`` temporal frames, ``T' = T / alpha`` CLIP frames, grid ``g``,
``L = g*g + 1`` tokens):

* the temporal stream is a volume ``[b, D, T, g, g]`` (channels first, for ``Conv3d``);
* the integration stream is sequence-first like CLIP's blocks, ``[L, b*T', I]`` with the
  frames b-major / t-minor and the class token at row 0.

All activations are QuickGELU, as in CLIP. Parameter names are the official ones
(docs/dist.md §Checkpoints), so the checkpoint key table is the identity under ``dist_net.``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.models._common import QuickGELU

__all__ = ["TemporalBlock", "IntegrationBlock", "TemporalToIntegration", "IntegrationToTemporal"]


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("c_fc", nn.Linear(dim, hidden)), ("gelu", QuickGELU()),
                                      ("c_proj", nn.Linear(hidden, dim))]))


class TemporalBlock(nn.Module):
    """One layer of the temporal encoder: ``x <- act(x + Conv(1,3,3)(act(Conv(k,1,1)(LN(x)))))``
    on ``[b, D, T, g, g]`` (the LayerNorm is over ``D``)."""

    def __init__(self, dim: int, kernel: int = 3, mlp_ratio: float = 1.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.temporal_net = nn.Sequential(OrderedDict([
            ("c_fc1", nn.Conv3d(dim, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0))),
            ("gelu1", QuickGELU()),
            ("c_fc2", nn.Conv3d(hidden, dim, (1, 3, 3), padding=(0, 1, 1))),
        ]))
        self.gelu = QuickGELU()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x.movedim(1, -1)).movedim(-1, 1)
        return self.gelu(x + self.temporal_net(h))


class IntegrationBlock(nn.Module):
    """The integration branch's residual update of ``x[L, b*T', I]``:
    ``FFN(LN(x)) + TemporalFFN(LN_t(x))``, the temporal FFN being ``1x1 -> Conv(k,1,1) ->
    act -> 1x1`` over the ``T'`` frames of each token (class token included)."""

    def __init__(self, dim: int, frames: int, kernel: int = 3, mlp_ratio: float = 1.0, temporal_ratio: float = 0.25):
        super().__init__()
        hidden, t_hidden = int(dim * mlp_ratio), int(dim * temporal_ratio)
        self.frames = int(frames)
        self.ffn = _mlp(dim, hidden)
        self.temporal_ffn = nn.Sequential(OrderedDict([
            ("c_fc1", nn.Conv3d(dim, t_hidden, 1)),
            ("c_fc2", nn.Conv3d(t_hidden, t_hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0))),
            ("gelu1", QuickGELU()),
            ("c_proj", nn.Conv3d(t_hidden, dim, 1)),
        ]))
        self.ln = nn.LayerNorm(dim)
        self.ln_temporal = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, bt, c = x.shape
        b, t = bt // self.frames, self.frames
        # [L, b*T', I] -> [b, I, T', L, 1]: a Conv3d over (T', L, 1) with a (k, 1, 1) kernel
        # mixes each token with the same token of the neighbouring frames
        v = self.ln_temporal(x).view(length, b, t, c).permute(1, 3, 2, 0).unsqueeze(-1)
        v = self.temporal_ffn(v).squeeze(-1).permute(3, 0, 2, 1).reshape(length, bt, c)
        return self.ffn(self.ln(x)) + v


class TemporalToIntegration(nn.Module):
    """Temporal stream ``[b, D, T, g, g]`` -> integration tokens ``[L, b*T', I]``: a
    ``Conv3d(D -> I, k=(alpha,1,1), stride alpha)`` pools each group of ``alpha`` frames onto
    the CLIP frame it belongs to, and a learnable per-frame class token ``[T', I]`` fills row 0."""

    def __init__(self, temporal_dim: int, integration_dim: int, alpha: int, frames: int):
        super().__init__()
        self.linear_fuse = nn.Conv3d(temporal_dim, integration_dim, (alpha, 1, 1), stride=(alpha, 1, 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, frames, integration_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_fuse(x).flatten(3)          # [b, I, T', g*g]
        b = y.shape[0]
        y = y.permute(3, 0, 2, 1)                   # [g*g, b, T', I]
        y = torch.cat([self.cls_token.expand(1, b, -1, -1).to(y.dtype), y], dim=0)
        return y.flatten(1, 2)                      # [L, b*T', I]


class IntegrationToTemporal(nn.Module):
    """Integration tokens ``[L, b*T', I]`` -> temporal stream ``[b, D, T, g, g]``: a
    ``Linear(I -> D)`` on the patch tokens, repeated ``alpha`` times along time (nearest)."""

    def __init__(self, integration_dim: int, temporal_dim: int, alpha: int, frames: int):
        super().__init__()
        self.linear_fuse = nn.Linear(integration_dim, temporal_dim)
        self.alpha = int(alpha)
        self.frames = int(frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_fuse(x[1:])                 # [g*g, b*T', D]
        n, bt, d = y.shape
        b, t, g = bt // self.frames, self.frames, int(round(n ** 0.5))
        y = y.view(n, b, t, d).permute(1, 3, 2, 0).reshape(b, d, t, g, g)
        return F.interpolate(y, scale_factor=(self.alpha, 1, 1), mode="nearest")
