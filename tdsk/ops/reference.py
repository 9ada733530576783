"""Pure-PyTorch reference implementations of the tdsk ops.

These are written to be obviously correct, not fast. Two kinds:

* the forwards of the public functions, :func:`temporal_pool_diff_reference` (the
  TD-Adapter's ``D_z = Z_s - Pool(Z_s)``, Eq. 4 of the TDS-CLIP paper, with the
  official code's channel-mean mix), :func:`frame_diff_concat_reference` (the
  SME-Adapter's ``D_i``, Eq. 2 / Fig. 4) and :func:`local_temporal_diff_reference`
  (M2-CLIP's local temporal difference, the input of its TED-Adapter's offset
  branch). They are the oracle of every equivalence test, forward *and* gradients:
  there they are differentiated by autograd;
* the references of the registered ops' kernel contracts, which are the default
  kernels of ``torch.ops.tdsk.*`` (what serves a device without a compiled kernel):
  :func:`frame_diff_concat_scaled_reference` (the op takes a per-channel ``scale``
  instead of mean/std) and the hand-written backwards
  :func:`temporal_pool_diff_backward_reference`,
  :func:`frame_diff_concat_backward_reference` and
  :func:`local_temporal_diff_backward_reference` (written out because they run below
  the op's autograd layer). The tests check them against autograd of the forwards,
  and the compiled kernels against them bit for bit where the operation order is
  the same.

Half and bfloat16 inputs are computed in float32 ("opmath", like PyTorch's own
kernels) and rounded once at the end, which is what the fused kernels do too.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "temporal_pool_diff_reference",
    "temporal_pool_diff_backward_reference",
    "frame_diff_concat_reference",
    "frame_diff_concat_scaled_reference",
    "frame_diff_concat_backward_reference",
    "local_temporal_diff_reference",
    "local_temporal_diff_backward_reference",
]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def temporal_pool_diff_reference(x: torch.Tensor, kernel_size: int = 3, channel_mix: float = 0.0) -> torch.Tensor:
    """Reference for :func:`tdsk.ops.temporal_pool_diff.temporal_pool_diff` (Eq. 4 of the paper).

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


def temporal_pool_diff_backward_reference(
    grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int, channel_mix: float
) -> torch.Tensor:
    """Reference of ``torch.ops.tdsk.temporal_pool_diff_backward``: ``grad_x`` from ``grad_out`` and ``x``.

    Written out by hand (it runs below the op's autograd layer). Same rule as
    max_pool3d: the earliest maximal frame of the window receives the gradient
    (torch.argmax documents first-index tie breaking). With
    ``g_d = (1 - a) * g + (a / C) * sum_c g``:
    ``grad_x[t] = g_d[t] - sum(g_d[t'] for the windows t' whose argmax is t)``.
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xo, g = x.to(work), grad_out.to(work)
    channels, frames, pad = x.shape[1], x.shape[2], kernel_size // 2
    grad_d = (1.0 - channel_mix) * g + (channel_mix / channels) * g.sum(dim=1, keepdim=True)
    padded = F.pad(xo, (0, 0, 0, 0, pad, pad), value=float("-inf"))
    windows = padded.unfold(2, kernel_size, 1)  # [N, C, T, H, W, k]
    source = windows.argmax(dim=-1) + torch.arange(frames, device=x.device).view(1, 1, frames, 1, 1)
    grad_padded = torch.zeros_like(padded)
    grad_padded.scatter_add_(2, source, -grad_d)  # padded frame index = source (offset by pad)
    grad_x = grad_d + grad_padded[:, :, pad : pad + frames]
    return grad_x.to(x.dtype).contiguous()


def frame_diff_concat_reference(
    frames: torch.Tensor,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Reference for :func:`tdsk.ops.frame_diff_concat.frame_diff_concat` (Eq. 2 of the paper).

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


# The registered op's contract: a per-channel ``scale`` instead of mean/std (the mean
# cancels in a difference; see :mod:`tdsk.ops.frame_diff_concat`).

def frame_diff_concat_scaled_reference(
    frames: torch.Tensor, scale: Optional[torch.Tensor], out_dtype: torch.dtype
) -> torch.Tensor:
    """Reference of ``torch.ops.tdsk.frame_diff_concat``: ``(f[j+1] - f[j]) * scale[c]``, channels concatenated.

    ``frames``: ``Tensor[N, T, M, C, H, W]`` (uint8 or floating); ``scale``: ``None``
    or ``Tensor[C]``. Computed in float32 (float64 when the frames or the result are
    float64) and rounded once to ``out_dtype``; result ``Tensor[N, (M-1)*C, T, H, W]``.
    """
    n, t, m, c, h, w = frames.shape
    work = torch.float64 if torch.float64 in (frames.dtype, out_dtype) else torch.float32
    f = frames.to(work)
    d = f[:, :, 1:] - f[:, :, :-1]
    if scale is not None:
        d = d * scale.to(work).view(c, 1, 1)
    return d.reshape(n, t, (m - 1) * c, h, w).permute(0, 2, 1, 3, 4).to(out_dtype).contiguous()


def frame_diff_concat_backward_reference(
    grad_out: torch.Tensor, scale: Optional[torch.Tensor], num_local: int, frames_dtype: torch.dtype
) -> torch.Tensor:
    """Reference of ``torch.ops.tdsk.frame_diff_concat_backward`` (written out by hand).

    ``grad_out``: ``Tensor[N, (M-1)*C, T, H, W]`` -> ``Tensor[N, T, M, C, H, W]`` of
    ``frames_dtype`` with ``grad[:, t, m, c] = gs[m-1] - gs[m]``, ``gs = scale[c] * g``
    of the difference groups, the missing ends left out.
    """
    n, mc, t, h, w = grad_out.shape
    c = mc // (num_local - 1)
    work = torch.float64 if torch.float64 in (grad_out.dtype, frames_dtype) else torch.float32
    g = grad_out.to(work).permute(0, 2, 1, 3, 4).reshape(n, t, num_local - 1, c, h, w)
    if scale is not None:
        g = g * scale.to(work).view(c, 1, 1)
    grad = torch.zeros((n, t, num_local, c, h, w), dtype=work, device=grad_out.device)
    grad[:, :, 1:] += g
    grad[:, :, :-1] -= g
    return grad.to(frames_dtype)


def local_temporal_diff_reference(x: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`tdsk.ops.local_temporal_diff.local_temporal_diff` (M2-CLIP's local temporal difference).

    ``x``: ``Tensor[B, T, *rest]`` -> same shape, contiguous, with
    ``out[:, 0] = 0`` and ``out[:, t] = x[:, t] - x[:, t-1]`` for ``t >= 1``.
    Built with ``torch.cat`` (no in-place writes), so autograd of it is the
    independent gradient oracle of the tests.
    """
    xo = x.to(_opmath(x.dtype))
    d = torch.cat([torch.zeros_like(xo[:, :1]), xo[:, 1:] - xo[:, :-1]], dim=1)
    return d.to(x.dtype).contiguous()


def local_temporal_diff_backward_reference(grad_out: torch.Tensor) -> torch.Tensor:
    """Reference of ``torch.ops.tdsk.local_temporal_diff_backward`` (written out by hand).

    ``grad_out``: ``Tensor[B, T, *rest]`` -> ``grad_x`` of the same shape and dtype,
    contiguous: ``grad_x[:, t] = g[:, t] * [t >= 1] - g[:, t+1] * [t + 1 <= T - 1]``
    (``g[:, 0]`` meets the constant first frame and is dropped). Computed as
    ``(0 + g[t]) - g[t+1]`` in float32 (float64 for float64), rounded once.
    """
    g = grad_out.to(_opmath(grad_out.dtype))
    grad = torch.zeros_like(g, memory_format=torch.contiguous_format)
    grad[:, 1:] += g[:, 1:]
    grad[:, :-1] -= g[:, 1:]
    return grad.to(grad_out.dtype)
