"""``temporal_pool_diff``: the TD-Adapter core, as the custom op ``torch.ops.tdsk.temporal_pool_diff``.

The feature difference of Eq. 4 of the TDS-CLIP paper, ``D_z = Z_s - Pool(Z_s)``
(Fig. 3(b)), with the temporal max-pool of the official TD-Adapter and its optional
channel-mean mix (docs/model.md).

This file holds the whole op: the public function (argument checks), the
registration (schema, fake kernel, autograd) and the device kernels:

* CPU: the C++ kernel of ``tdsk._C`` (registered on the CPU key, see
  :mod:`tdsk.ops._backends`);
* CUDA: the Triton launchers of ``tdsk.kernels``;
* default (any device without its own kernel):
  :func:`tdsk.ops.reference.temporal_pool_diff_reference` and
  :func:`tdsk.ops.reference.temporal_pool_diff_backward_reference`.
"""
import math
import numbers

import torch

from tdsk.ops import reference
from tdsk.ops._backends import register_cpu_kernels, triton_kernels
from tdsk.ops._common import FLOAT_DTYPES, check_tensor

__all__ = ["temporal_pool_diff"]


# ---------------------------------------------------------------------------
# the ops and their default kernels (the reference)
# ---------------------------------------------------------------------------

@torch.library.custom_op("tdsk::temporal_pool_diff", mutates_args=())
def _temporal_pool_diff_op(x: torch.Tensor, kernel_size: int, channel_mix: float) -> torch.Tensor:
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return reference.temporal_pool_diff_reference(x, kernel_size, channel_mix)


@torch.library.custom_op("tdsk::temporal_pool_diff_backward", mutates_args=())
def _temporal_pool_diff_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int, channel_mix: float
) -> torch.Tensor:
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return reference.temporal_pool_diff_backward_reference(grad_out, x, kernel_size, channel_mix)


@_temporal_pool_diff_op.register_fake
def _(x, kernel_size, channel_mix):
    torch._check(x.dim() == 5, lambda: "temporal_pool_diff: x must be 5-D [N, C, T, H, W]")
    return x.new_empty(x.shape)


@_temporal_pool_diff_backward_op.register_fake
def _(grad_out, x, kernel_size, channel_mix):
    torch._check(grad_out.shape == x.shape, lambda: "temporal_pool_diff_backward: grad shape mismatch")
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, kernel_size, channel_mix = inputs
    # Only x is saved: the backward recomputes the window argmax from it, so no
    # index tensor is kept alive between forward and backward.
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
    ctx.kernel_size = kernel_size
    ctx.channel_mix = channel_mix


def _backward(ctx, grad_out):
    (x,) = ctx.saved_tensors
    if x is None:
        return None, None, None
    grad_x = torch.ops.tdsk.temporal_pool_diff_backward(grad_out, x, ctx.kernel_size, ctx.channel_mix)
    return grad_x, None, None


_temporal_pool_diff_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# device kernels
# ---------------------------------------------------------------------------

register_cpu_kernels("temporal_pool_diff", "temporal_pool_diff_backward")

_triton = triton_kernels()
if _triton is not None:

    @_temporal_pool_diff_op.register_kernel("cuda")
    def _(x, kernel_size, channel_mix):
        if x.numel() == 0:  # the launchers take numel > 0
            return torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return _triton.temporal_pool_diff_forward(x, kernel_size, channel_mix)

    @_temporal_pool_diff_backward_op.register_kernel("cuda")
    def _(grad_out, x, kernel_size, channel_mix):
        if x.numel() == 0:
            return torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return _triton.temporal_pool_diff_backward(grad_out, x, kernel_size, channel_mix)


# ---------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------

def temporal_pool_diff(x: torch.Tensor, kernel_size: int = 3, channel_mix: float = 0.0) -> torch.Tensor:
    """Temporal max-pool minus input, with an optional channel-mean mix (TD-Adapter core, Eq. 4).

    Args:
        x: ``Tensor[N, C, T, H, W]``, float32/float16/bfloat16/float64, any strides,
            ``T >= 1``, on any device (CPU: C++ kernel, CUDA: Triton kernel).
        kernel_size: odd temporal window ``k >= 1``. The max at frame ``t`` is over
            the frames ``t - k//2 .. t + k//2`` that exist (padding never wins),
            exactly ``F.max_pool3d(kernel=(k, 1, 1), stride=1, padding=(k//2, 0, 0))``.
        channel_mix: ``a`` in ``[0, 1]``. With ``d = x - p`` the result is
            ``(1 - a) * d + a * d.mean(dim=1, keepdim=True)``; the official
            TD-Adapter uses ``a = 0.5``.

    Returns:
        A new contiguous ``Tensor[N, C, T, H, W]`` of ``x``'s dtype. Differentiable in
        ``x``; on ties the gradient goes to the earliest frame of the window (as
        ``max_pool3d``). The backward recomputes the argmax from ``x``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: wrong rank, ``T == 0``, even or non-positive ``kernel_size``,
            ``channel_mix`` outside ``[0, 1]``.
    """
    check_tensor("x", x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"temporal_pool_diff: x must be float32, float16, bfloat16 or float64, got {x.dtype}"
        )
    if x.dim() != 5:
        raise ValueError(
            f"temporal_pool_diff: x must be Tensor[N, C, T, H, W] (5-D), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[2] < 1:
        raise ValueError(f"temporal_pool_diff: x needs T >= 1 frames (dim 2), got shape {tuple(x.shape)}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral):
        raise TypeError(f"temporal_pool_diff: kernel_size must be an int, got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"temporal_pool_diff: kernel_size must be odd and >= 1, got {kernel_size}")
    if isinstance(channel_mix, bool) or not isinstance(channel_mix, numbers.Real):
        raise TypeError(f"temporal_pool_diff: channel_mix must be a float, got {type(channel_mix).__name__}")
    if not (0.0 <= float(channel_mix) <= 1.0) or math.isnan(float(channel_mix)):
        raise ValueError(f"temporal_pool_diff: channel_mix must be in [0, 1], got {channel_mix}")
    return torch.ops.tdsk.temporal_pool_diff(x, int(kernel_size), float(channel_mix))
