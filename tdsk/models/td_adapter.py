"""TD-Adapter: temporal-difference excitation of the side conv stack (docs/model.md §6; paper Eq. 4).

On the conv-stack output ``y`` (token layout ``[B, T, N, D]``, i.e. the volume
``(B, D, T, g, g)`` channels-last):

    a     = BN1(Conv1x1_{D->R}(y))                       R = D // reduction
    delta = a - Pool_t(a)                                 temporal max, window k, stride 1
    q     = (1 - mix) * delta + mix * mean_R(delta)       mix = 0.5 (official)
    s     = sigmoid(BN2(Conv1x1_{R->D}(q))) - 0.5
    TD(y) = y + y * s

``Pool_t`` and the difference and channel mix are one fused op,
:func:`tdsk.ops.temporal_pool_diff` (``channel_mix=mix``), which accepts the strided
``[B, R, T, N, 1]`` view of the token layout without a copy.

Ablation variants (paper Tab. 3(d)), ``variant``:

* ``'pool'``   the paper's TD-Adapter (above; parameter-free temporal op);
* ``'conv'``   temporal convolution enhancement: ``delta = a - DWConv_t(a)`` with a
  learnable depthwise ``(k, 1, 1)`` conv (zero padding), extra keys ``tconv.*``;
* ``'direct'`` direct feature difference: ``delta[t] = a[t+1] - a[t]`` (0 at the last frame).

(``'none'`` -- no adapter, plain conv stack -- is handled by the TDS block.)
Parameter names match the official ``mse`` SAModule: ``conv1, bn1, conv2, bn2``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.models._common import batch_norm_channels_last
from tdsk.ops.temporal_diff import temporal_pool_diff

__all__ = ["TDAdapter", "TD_VARIANTS"]

TD_VARIANTS = ("pool", "conv", "direct", "none")


class TDAdapter(nn.Module):
    def __init__(self, dim: int, reduction: int = 16, kernel_size: int = 3, channel_mix: float = 0.5,
                 variant: str = "pool"):
        super().__init__()
        if variant not in ("pool", "conv", "direct"):
            raise ValueError(f"td_variant must be one of {TD_VARIANTS}, got {variant!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"pool_kernel must be odd and >= 1, got {kernel_size}")
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(f"TD-Adapter bottleneck dim // reduction = {dim} // {reduction} is 0")
        self.variant = variant
        self.kernel_size = int(kernel_size)
        self.channel_mix = float(channel_mix)
        # 1x1 Conv2d as in the official SAModule (same checkpoint shapes); applied as a
        # matmul on the token layout.
        self.conv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        if variant == "conv":
            self.tconv = nn.Conv3d(hidden, hidden, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                                   groups=hidden, bias=True)

    def _difference(self, a: torch.Tensor) -> torch.Tensor:
        """``delta`` mixed with its channel mean; ``a``: ``[B, T, N, R]`` -> same layout."""
        vol = a.permute(0, 3, 1, 2).unsqueeze(-1)  # [B, R, T, N, 1] strided view
        if self.variant == "pool":
            q = temporal_pool_diff(vol, self.kernel_size, channel_mix=self.channel_mix)
            return q.squeeze(-1).permute(0, 2, 3, 1)
        if self.variant == "conv":
            delta = vol - self.tconv(vol)
        else:  # direct
            delta = torch.cat([vol[:, :, 1:] - vol[:, :, :-1], torch.zeros_like(vol[:, :, :1])], dim=2)
        delta = (1.0 - self.channel_mix) * delta + self.channel_mix * delta.mean(dim=1, keepdim=True)
        return delta.squeeze(-1).permute(0, 2, 3, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: ``[B, T, N, D]`` -> ``TD(y)``, same shape."""
        a = batch_norm_channels_last(self.bn1, F.linear(y, self.conv1.weight.flatten(1)))
        q = self._difference(a)
        e = batch_norm_channels_last(self.bn2, F.linear(q, self.conv2.weight.flatten(1)))
        return y + y * (torch.sigmoid(e) - 0.5)
