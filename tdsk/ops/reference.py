"""Pure-PyTorch reference implementations of the tdsk ops.

These are written to be obviously correct, not fast. They are

* the oracle of every equivalence test (forward *and* gradients: they are
  differentiated by autograd, never by hand), and
* the fallback used when neither the C++ extension (CPU) nor Triton (CUDA) is
  available.

Half and bfloat16 inputs are computed in float32 ("opmath", like PyTorch's own
kernels) and rounded once at the end, which is what the fused kernels do too.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "temporal_pool_diff_reference",
    "frame_diff_concat_reference",
]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def temporal_pool_diff_reference(x: torch.Tensor, kernel_size: int = 3, channel_mix: float = 0.0) -> torch.Tensor:
    """Reference for :func:`tdsk.ops.temporal_diff.temporal_pool_diff`.

    ``x``: ``Tensor[N, C, T, H, W]``. The temporal max is literally
    ``F.max_pool3d(kernel=(k, 1, 1), stride=1, padding=(k // 2, 0, 0))`` (padding
    is -inf, so it never wins; on ties max_pool3d routes the gradient to the
    earliest frame of the window), then ``d = x - p`` and
    ``(1 - channel_mix) * d + channel_mix * d.mean(dim=1, keepdim=True)``.
    """
    xo = x.to(_opmath(x.dtype))
    pad = kernel_size // 2
    pooled = F.max_pool3d(xo, kernel_size=(kernel_size, 1, 1), stride=1, padding=(pad, 0, 0))
    d = xo - pooled
    if channel_mix != 0.0:
        d = (1.0 - channel_mix) * d + channel_mix * d.mean(dim=1, keepdim=True)
    return d.to(x.dtype).contiguous()


def frame_diff_concat_reference(
    frames: torch.Tensor,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Reference for :func:`tdsk.ops.temporal_diff.frame_diff_concat`.

    ``frames``: ``Tensor[N, T, M, C, H, W]`` -> ``Tensor[N, (M-1)*C, T, H, W]`` with
    ``out[:, j*C + c, t] = f[:, t, j+1, c] - f[:, t, j, c]`` where ``f`` is the
    (optionally normalised) frames: uint8 frames become ``f / 255``; with
    ``mean``/``std`` (length C, pixel units in [0, 1]) ``f = (f - mean) / std``,
    applied *before* differencing, exactly as the official loader does.
    """
    n, t, m, c, h, w = frames.shape
    if out_dtype is None:
        out_dtype = torch.float32 if not frames.is_floating_point() else frames.dtype
    work = torch.promote_types(_opmath(out_dtype), _opmath(frames.dtype)) if frames.is_floating_point() else torch.float32
    if out_dtype == torch.float64:
        work = torch.float64
    f = frames.to(work)
    if not frames.is_floating_point():
        f = f / 255.0
    if mean is not None:
        f = (f - mean.to(work).view(c, 1, 1)) / std.to(work).view(c, 1, 1)
    d = f[:, :, 1:] - f[:, :, :-1]  # [N, T, M-1, C, H, W]
    out = d.reshape(n, t, (m - 1) * c, h, w).permute(0, 2, 1, 3, 4)
    return out.to(out_dtype).contiguous()
