"""Triton kernels of ``local_temporal_diff`` (M2-CLIP's local temporal difference, the input of
the difference branch of its TED-Adapter; "M2-CLIP", AAAI 2024; docs/ops.md), forward and backward.

Layouts
-------
* ``x`` (forward) / ``grad_out`` (backward): ``Tensor[B, T, *rest]``,
  float32/float16/bfloat16/float64. The ``rest`` dims are seen as one axis of
  ``R = prod(rest)`` elements with ``Tensor.reshape(B, T, R)``: a view (read in place,
  with its B, T and R strides) whenever they can be walked with one stride -- contiguous
  tensors, any slice or permutation of B and T, M2-CLIP's
  ``tokens[:, 1:, :].view(B, T, N, C)`` -- and a contiguous copy otherwise.
* Results: new contiguous tensors of the input's shape and dtype,
  ``out[:, 0] = 0``, ``out[:, t] = x[:, t] - x[:, t-1]``, and
  ``grad_x[:, t] = g[:, t] * [t >= 1] - g[:, t+1] * [t <= T-2]``.

Values are converted to float32 (float64 for float64), subtracted and rounded once
on store, as :mod:`tdsk.ops.reference` does, so results are bit-exact (except that
the Triton *interpreter* rounds float32 -> bfloat16 by truncation).

Kernel design: one program per ``(b, block of R)``; it walks the T frames once,
keeping the previous frame (forward) or the next gradient (backward) in registers,
so every input element is read once and every output element written once. The
contiguous R axis is innermost (coalesced; vectorised when its stride is 1, which
Triton specialises). Offsets are int32 unless a tensor's address range reaches
2**31 elements (the ``USE_INT64`` constexpr then widens ``b`` and ``r`` before they
meet a stride); the per-frame steps are pointer increments (64-bit by construction).
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, check_block, check_launchable, device_guard, interpreting, needs_int64, next_pow2

__all__ = ["local_temporal_diff_forward", "local_temporal_diff_backward"]


@triton.jit
def _row_coords(n_r_blocks, R, BLOCK: tl.constexpr, USE_INT64: tl.constexpr):
    """This program's clip ``b``, element indices ``r`` of its block of R, and their mask."""
    pid = tl.program_id(0)
    b = pid // n_r_blocks
    r = (pid % n_r_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = r < R
    if USE_INT64:
        b = b.to(tl.int64)
        r = r.to(tl.int64)
    return b, r, mask


@triton.jit
def _local_temporal_diff_fwd_kernel(
    x_ptr, out_ptr,
    T, R,
    sxb, sxt, sxr,
    n_r_blocks,
    BLOCK: tl.constexpr, USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    b, r, mask = _row_coords(n_r_blocks, R, BLOCK, USE_INT64)
    x_ptrs = x_ptr + b * sxb + r * sxr
    out_ptrs = out_ptr + b * T * R + r  # out is contiguous [B, T, R]
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptrs, tl.zeros([BLOCK], ACC).to(ty), mask=mask)  # frame 0 has no predecessor
    prev = tl.load(x_ptrs, mask=mask, other=0).to(ACC)
    for _t in range(1, T):
        x_ptrs += sxt
        out_ptrs += R
        cur = tl.load(x_ptrs, mask=mask, other=0).to(ACC)
        tl.store(out_ptrs, (cur - prev).to(ty), mask=mask)
        prev = cur  # each frame is read once: the minuend of one difference, the subtrahend of the next


@triton.jit
def _local_temporal_diff_bwd_kernel(
    g_ptr, gx_ptr,
    T, R,
    sgb, sgt, sgr,
    n_r_blocks,
    BLOCK: tl.constexpr, USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    b, r, mask = _row_coords(n_r_blocks, R, BLOCK, USE_INT64)
    g_ptrs = g_ptr + b * sgb + r * sgr
    gx_ptrs = gx_ptr + b * T * R + r  # grad_x is contiguous [B, T, R]
    ty = gx_ptr.dtype.element_ty
    # grad_x[t] = g[t] - g[t+1]; g[0] meets the constant first frame, so frame 0 starts from 0.
    cur = tl.zeros([BLOCK], ACC)
    for _t in range(0, T - 1):
        g_ptrs += sgt
        nxt = tl.load(g_ptrs, mask=mask, other=0).to(ACC)
        tl.store(gx_ptrs, (cur - nxt).to(ty), mask=mask)
        gx_ptrs += R
        cur = nxt
    tl.store(gx_ptrs, cur.to(ty), mask=mask)  # the last frame has no successor


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[B, T, R]``: a view when the rest dims collapse to one stride, else a copy."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _block(R: int, interp: bool, block: Optional[int]):
    """``(BLOCK, num_warps)``.

    GPU: 1024-element tiles, 4 warps (two 16-byte fp32 vectors per thread per frame): a
    streaming kernel with T loads and T stores per tile, where more programs in flight beat
    bigger tiles. Interpreter: up to 16384 elements per program (its cost is per program).
    """
    bk = check_block("block", block) if block is not None else min(next_pow2(R), 16384 if interp else 1024)
    return bk, 4 if bk <= 2048 else 8


def _launch(kernel, src: torch.Tensor, op: str, block: Optional[int], force_int64: bool) -> torch.Tensor:
    check_launchable(kernel, src, op)
    rows = _rows(src)
    B, T, R = rows.shape
    out = torch.empty(src.shape, dtype=src.dtype, device=src.device)
    bk, warps = _block(R, interpreting(src), block)
    n_r = triton.cdiv(R, bk)
    grid = B * n_r
    if grid >= 2**31:
        raise ValueError(f"{op}: shape {tuple(src.shape)} too large for the Triton kernels")
    sb, st, sr = rows.stride()
    use64 = bool(force_int64) or needs_int64(rows, out)
    with device_guard(src):
        kernel[(grid,)](
            rows, out,
            T, R,
            sb, st, sr,
            n_r,
            BLOCK=bk, USE_INT64=use64, ACC=acc_dtype(src.dtype),
            num_warps=warps,
        )
    return out


def local_temporal_diff_forward(
    x: torch.Tensor, *, block: Optional[int] = None, force_int64: bool = False
) -> torch.Tensor:
    """``out[:, 0] = 0``, ``out[:, t] = x[:, t] - x[:, t-1]``.

    Args:
        x: ``Tensor[B, T, *rest]`` (floating, any strides, numel > 0), a CUDA tensor or a
            CPU tensor under ``TRITON_INTERPRET=1``.
        block, force_int64: tuning/testing hooks (a power of two; the 64-bit offset
            variant). Leave at the defaults.

    Returns:
        A new contiguous tensor of ``x``'s shape and dtype.
    """
    return _launch(_local_temporal_diff_fwd_kernel, x, "local_temporal_diff_forward", block, force_int64)


def local_temporal_diff_backward(
    grad_out: torch.Tensor, *, block: Optional[int] = None, force_int64: bool = False
) -> torch.Tensor:
    """Gradient of :func:`local_temporal_diff_forward`: ``grad_x[:, t] = g[:, t] * [t >= 1] - g[:, t+1] * [t <= T-2]``.

    Args:
        grad_out: ``Tensor[B, T, *rest]`` (floating, any strides, numel > 0).
        block, force_int64: as in the forward.

    Returns:
        A new contiguous tensor of ``grad_out``'s shape and dtype.
    """
    return _launch(_local_temporal_diff_bwd_kernel, grad_out, "local_temporal_diff_backward", block, force_int64)
