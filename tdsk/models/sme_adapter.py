"""SME-Adapter: the side network's stem (docs/model.md §4; paper eq. 2-3).

    S0 = BN_rgb(Conv_rgb(V)) + alpha * BN_diff(Conv_diff(Delta))        (docs/model.md §4)

``V`` is the centre frame of each segment, ``Delta`` the ``M-1`` differences of
consecutive local frames (``F_{j+1} - F_j``, channel ``3j + c``). Both convs are
Conv3d with kernel ``(3, P, P)``, stride ``(1, P, P)`` and padding ``(1, 1, 1)``: the
odd spatial padding shifts the patch grid one pixel up/left of the ViT's (docs/model.md §4).

Two equivalent ways to feed the difference stem (``mode``):

* ``'kernel'``: ``Delta`` is built by the fused :func:`tdsk.ops.frame_diff_concat`
  (one read of the frames, written directly in the conv's dtype under autocast);
* ``'folded'``: the differences are linear, so the conv is applied to the raw ``M``
  frames with weights ``w'_0 = -w_0``, ``w'_m = w_{m-1} - w_m``, ``w'_{M-1} = w_{M-2}``
  (never materialising ``Delta``). Same parameters and checkpoint keys; the numbers
  agree to float rounding.

``M = 1`` switches the difference branch off (``S0 = BN_rgb(Conv_rgb(V))``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.models._common import autocast_dtype, batch_norm
from tdsk.ops.temporal_diff import frame_diff_concat

__all__ = ["SMEAdapter", "fold_difference_weight"]


def fold_difference_weight(weight: torch.Tensor, num_local: int, channels: int = 3) -> torch.Tensor:
    """Difference-stem weights ``[D, (M-1)*C, ...]`` -> raw-frame weights ``[D, M*C, ...]``.

    ``sum_j w_j (F_{j+1} - F_j) = sum_m (w_{m-1} - w_m) F_m`` with ``w_{-1} = w_{M-1} = 0``.
    """
    d = weight.shape[0]
    w = weight.reshape(d, num_local - 1, channels, *weight.shape[2:])
    zero = torch.zeros_like(w[:, :1])
    folded = torch.cat([zero, w], dim=1) - torch.cat([w, zero], dim=1)
    return folded.reshape(d, num_local * channels, *weight.shape[2:])


class SMEAdapter(nn.Module):
    """Side-network stem. ``forward(video[B, T, M, 3, H, W]) -> S0[B, D, T, g, g]``.

    Parameter names follow the official checkpoint through :mod:`tdsk.models.official`:
    ``rgb_conv``/``rgb_bn`` = ``side_conv1``/``side_pre_bn3d``, ``diff_conv``/``diff_bn`` =
    ``side_conv1_c5``/``side_pre_bn3d_c5``.
    """

    def __init__(self, side_dim: int, patch_size: int, num_local: int = 5, fusion_alpha: float = 0.5,
                 mode: str = "kernel"):
        super().__init__()
        if mode not in ("kernel", "folded"):
            raise ValueError(f"sme_mode must be 'kernel' or 'folded', got {mode!r}")
        if num_local < 1 or num_local % 2 == 0:
            raise ValueError(f"num_local (M) must be odd and >= 1 (the centre frame feeds CLIP), got {num_local}")
        self.num_local = num_local
        self.fusion_alpha = float(fusion_alpha)
        self.mode = mode
        kernel, stride, pad = (3, patch_size, patch_size), (1, patch_size, patch_size), (1, 1, 1)
        self.rgb_conv = nn.Conv3d(3, side_dim, kernel, stride, pad, bias=True)
        self.rgb_bn = nn.BatchNorm3d(side_dim)
        if num_local > 1:
            self.diff_conv = nn.Conv3d(3 * (num_local - 1), side_dim, kernel, stride, pad, bias=True)
            self.diff_bn = nn.BatchNorm3d(side_dim)
        else:
            self.diff_conv = self.diff_bn = None

    def _difference_branch(self, video: torch.Tensor) -> torch.Tensor:
        conv = self.diff_conv
        if self.mode == "folded":
            b, t, m, c, h, w = video.shape
            raw = video.permute(0, 2, 3, 1, 4, 5).reshape(b, m * c, t, h, w)
            weight = fold_difference_weight(conv.weight, m, c)
            return F.conv3d(raw, weight, conv.bias, conv.stride, conv.padding)
        out_dtype = autocast_dtype(video.device)
        delta = frame_diff_concat(video, out_dtype=out_dtype)  # [B, (M-1)*3, T, H, W]
        return conv(delta)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        centre = video[:, :, self.num_local // 2].transpose(1, 2)  # [B, 3, T, H, W] view
        s = batch_norm(self.rgb_bn, self.rgb_conv(centre))
        if self.diff_conv is not None:
            s = s + self.fusion_alpha * batch_norm(self.diff_bn, self._difference_branch(video))
        return s
