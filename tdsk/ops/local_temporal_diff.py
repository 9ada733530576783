"""``local_temporal_diff``: M2-CLIP's local temporal difference, as the custom op ``torch.ops.tdsk.local_temporal_diff``.

M2-CLIP (Wang et al., "M2-CLIP: A Multimodal, Multi-task Adapting Framework for
Video Action Recognition", AAAI 2024, arXiv:2401.11649), the TED-Adapter of its
method section: the visual adapter models global Temporal Enhancement and local
temporal Difference; the difference part takes the *local temporal difference* of
the patch tokens of consecutive frames. With the frames along dim 1 this is a
backward difference in time,

    out[:, 0] = 0,    out[:, t] = x[:, t] - x[:, t-1]   (t >= 1),

on ``x = tokens[:, 1:, :].view(B, T, N, C)`` (the patch tokens, class token
excluded). The op takes any ``Tensor[B, T, *rest]``. See docs/ops.md.

This file holds the whole op: the public function (argument checks), the
registration (schema, fake kernel, autograd) and the device kernels:

* CPU: the C++ kernel of ``tdsk._C`` (registered on the CPU key, see
  :mod:`tdsk.ops._backends`);
* CUDA: the Triton launchers of ``tdsk.kernels``;
* default (any device without its own kernel):
  :func:`tdsk.ops.reference.local_temporal_diff_reference` and
  :func:`tdsk.ops.reference.local_temporal_diff_backward_reference`.

The backward op is linear in ``grad_out`` and its adjoint is the forward op, so it
has autograd too (double backward, e.g. a gradient penalty, works).
"""
import torch

from tdsk.ops import reference
from tdsk.ops._backends import register_cpu_kernels, triton_kernels
from tdsk.ops._common import FLOAT_DTYPES, check_tensor

__all__ = ["local_temporal_diff"]


# ---------------------------------------------------------------------------
# the ops and their default kernels (the reference)
# ---------------------------------------------------------------------------

@torch.library.custom_op("tdsk::local_temporal_diff", mutates_args=())
def _local_temporal_diff_op(x: torch.Tensor) -> torch.Tensor:
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return reference.local_temporal_diff_reference(x)


@torch.library.custom_op("tdsk::local_temporal_diff_backward", mutates_args=())
def _local_temporal_diff_backward_op(grad_out: torch.Tensor) -> torch.Tensor:
    if grad_out.numel() == 0:
        return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device)
    return reference.local_temporal_diff_backward_reference(grad_out)


@_local_temporal_diff_op.register_fake
def _(x):
    torch._check(x.dim() >= 2, lambda: "local_temporal_diff: x must be at least 2-D [B, T, *rest]")
    return x.new_empty(x.shape)


@_local_temporal_diff_backward_op.register_fake
def _(grad_out):
    torch._check(grad_out.dim() >= 2, lambda: "local_temporal_diff_backward: grad_out must be at least 2-D")
    return grad_out.new_empty(grad_out.shape)


def _no_context(ctx, inputs, output):
    # Linear op: the backward needs nothing from the forward.
    pass


def _backward(ctx, grad_out):
    return torch.ops.tdsk.local_temporal_diff_backward(grad_out)


def _backward_backward(ctx, grad_grad_x):
    # local_temporal_diff_backward is the adjoint of local_temporal_diff, and vice versa.
    return torch.ops.tdsk.local_temporal_diff(grad_grad_x)


_local_temporal_diff_op.register_autograd(_backward, setup_context=_no_context)
_local_temporal_diff_backward_op.register_autograd(_backward_backward, setup_context=_no_context)


# ---------------------------------------------------------------------------
# device kernels
# ---------------------------------------------------------------------------

register_cpu_kernels("local_temporal_diff", "local_temporal_diff_backward")

_triton = triton_kernels()
if _triton is not None:

    @_local_temporal_diff_op.register_kernel("cuda")
    def _(x):
        if x.numel() == 0:  # the launchers take numel > 0
            return torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return _triton.local_temporal_diff_forward(x)

    @_local_temporal_diff_backward_op.register_kernel("cuda")
    def _(grad_out):
        if grad_out.numel() == 0:
            return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device)
        return _triton.local_temporal_diff_backward(grad_out)


# ---------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------

def local_temporal_diff(x: torch.Tensor) -> torch.Tensor:
    """Backward difference of consecutive frames, zero for the first (M2-CLIP's local temporal difference).

    The input of the local-temporal-difference branch of M2-CLIP's TED-Adapter
    ("M2-CLIP: A Multimodal, Multi-task Adapting Framework for Video Action
    Recognition", AAAI 2024, arXiv:2401.11649, method section, TED-Adapter;
    docs/ops.md).

    Args:
        x: ``Tensor[B, T, *rest]`` with the frames along dim 1, ``T >= 1``; in
            M2-CLIP the patch tokens ``[B, T, N, C]`` (``N = H*W`` patches, class
            token excluded), typically the non-contiguous view
            ``tokens[:, 1:, :].view(B, T, N, C)``. float32/float16/bfloat16/float64,
            any strides, on any device (CPU: C++ kernel, CUDA: Triton kernel).
            The kernels read ``x`` in place whenever the ``rest`` dims can be walked
            with one stride (the case of that view, of any slice or permutation of
            ``B`` and ``T``, and of contiguous tensors); only when they cannot (e.g.
            a transposed ``N``/``C``) do they first copy ``x`` to a contiguous
            ``[B, T, prod(rest)]`` (``Tensor.reshape``).

    Returns:
        A new contiguous tensor of ``x``'s shape and dtype with ``out[:, 0] = 0`` and
        ``out[:, t] = x[:, t] - x[:, t-1]`` (``t >= 1``; all zeros when ``T == 1``).
        Half and bfloat16 are subtracted in float32 and rounded once. Differentiable
        in ``x``: ``grad_x[:, t] = g[:, t] * [t >= 1] - g[:, t+1] * [t <= T-2]``.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``x`` has fewer than 2 dims, ``T == 0``, or a non-floating dtype
            (integer, bool, complex).
    """
    check_tensor("x", x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"local_temporal_diff: x must be float32, float16, bfloat16 or float64, got {x.dtype} "
            "(convert integer tokens with x.float() first)"
        )
    if x.dim() < 2:
        raise ValueError(
            f"local_temporal_diff: x must be Tensor[B, T, *rest] (at least 2-D, frames along dim 1), "
            f"got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] < 1:
        raise ValueError(f"local_temporal_diff: x needs T >= 1 frames (dim 1), got shape {tuple(x.shape)}")
    return torch.ops.tdsk.local_temporal_diff(x)
