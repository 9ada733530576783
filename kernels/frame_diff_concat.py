"""Triton kernels of ``frame_diff_concat`` (SME-Adapter input, Eq. 2 of the TDS-CLIP paper), forward and backward.

Layouts
-------
* ``frames``: ``Tensor[N, T, M, C, H, W]``, uint8 or float32/float16/bfloat16/float64,
  **any strides** (the official loader's ``(N*T, M*C, H, W)`` tensor viewed as 6-D,
  a channels-last decode, a slice... are read in place).
* ``scale``: optional float32 ``Tensor[C]`` (``1 / (255 * std)`` for uint8 frames,
  ``1 / std`` for floating ones; the mean cancels in a difference).
* forward result: new contiguous ``Tensor[N, (M-1)*C, T, H, W]`` of ``out_dtype`` with
  ``out[n, j*C + c, t] = (f[n, t, j+1, c] - f[n, t, j, c]) * scale[c]``.
* backward: ``grad_out`` ``Tensor[N, (M-1)*C, T, H, W]`` (any strides) -> new contiguous
  ``Tensor[N, T, M, C, H, W]`` of ``frames_dtype`` with
  ``grad[:, t, m, c] = scale[c] * g[:, (m-1)*C + c, t] - scale[c] * g[:, m*C + c, t]``
  (terms that do not exist left out).

Each value is converted to float32 (float64 when the frames or the result are
float64), subtracted there (uint8 differences are then exact), scaled, and rounded
once on store: the same operations in the same order as the reference, so float32
results are bit-exact.

Kernel design: one program per ``(n, t, block of channels, block of H*W)``
(:func:`._common.program_coords`); it walks
the M local frames once, keeping the previous frame in registers, so every input
element is read exactly once and every output element written once (one fused
pass, ``M`` loads and ``M - 1`` stores of a tile). The contiguous ``H*W`` axis is
innermost; for large frames (224x224) a program covers one channel and 1024-2048
pixels, for small frames several channels share a tile.

Offsets are int32 unless a tensor's address range reaches 2**31 elements; then the
``USE_INT64`` constexpr casts the indices to int64 before they meet a stride. The
per-frame steps are pointer increments (64-bit by construction).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (
    acc_dtype,
    check_block,
    check_launchable,
    device_guard,
    hw_layout,
    interpreting,
    needs_int64,
    next_pow2,
    plane_offsets,
    program_coords,
)

__all__ = ["frame_diff_concat_forward", "frame_diff_concat_backward"]


@triton.jit
def _tile(cb, hw_blk, C, HW, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, USE_INT64: tl.constexpr):
    """Channel indices ``cc``, pixel indices ``hw`` and the ``[BLOCK_C, BLOCK_HW]`` mask of
    channel block ``cb`` and pixel block ``hw_blk`` (``cc`` int64 with ``USE_INT64``)."""
    hw = hw_blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (cc < C)[:, None] & (hw < HW)[None, :]
    if USE_INT64:
        cc = cc.to(tl.int64)
    return cc, hw, mask


@triton.jit
def _frame_diff_concat_fwd_kernel(
    f_ptr, scale_ptr, out_ptr,
    T, C, W, HW,
    sfn, sft, sfm, sfc, sfh, sfw,
    num_diffs,          # M - 1
    out_j_stride,       # C * T * HW: distance between consecutive difference groups in out
    n_hw_blocks, n_c_blocks,
    HAS_SCALE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    HW_FLAT: tl.constexpr, USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    n, cb, t, hw_blk = program_coords(n_hw_blocks, T, n_c_blocks, USE_INT64)
    cc, hw, mask = _tile(cb, hw_blk, C, HW, BLOCK_C, BLOCK_HW, USE_INT64)
    f_hw = plane_offsets(hw, W, sfh, sfw, HW_FLAT, USE_INT64)
    if USE_INT64:
        hw = hw.to(tl.int64)
    f_ptrs = f_ptr + n * sfn + t * sft + (cc * sfc)[:, None] + f_hw[None, :]
    # out[n, j*C + c, t, hw] (contiguous), starting at j = 0
    out_ptrs = out_ptr + (((n * num_diffs * C) + cc) * T + t)[:, None] * HW + hw[None, :]
    if HAS_SCALE:
        s = tl.load(scale_ptr + cc, mask=cc < C, other=1.0).to(ACC)[:, None]
    ty = out_ptr.dtype.element_ty

    prev = tl.load(f_ptrs, mask=mask, other=0).to(ACC)
    for _j in range(0, num_diffs):
        f_ptrs += sfm
        cur = tl.load(f_ptrs, mask=mask, other=0).to(ACC)
        d = cur - prev
        if HAS_SCALE:
            d = d * s
        tl.store(out_ptrs, d.to(ty), mask=mask)
        out_ptrs += out_j_stride
        prev = cur  # each frame is read once: it is the "next" of one difference and the "prev" of the following


@triton.jit
def _frame_diff_concat_bwd_kernel(
    g_ptr, scale_ptr, gf_ptr,
    T, C, W, HW,
    sgn, sgc, sgt, sgh, sgw,
    num_diffs,          # M - 1
    g_j_stride,         # C * sgc: distance between difference groups in grad_out
    gf_m_stride,        # C * HW: distance between local frames in the (contiguous) result
    n_hw_blocks, n_c_blocks,
    HAS_SCALE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    HW_FLAT: tl.constexpr, USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    n, cb, t, hw_blk = program_coords(n_hw_blocks, T, n_c_blocks, USE_INT64)
    cc, hw, mask = _tile(cb, hw_blk, C, HW, BLOCK_C, BLOCK_HW, USE_INT64)
    g_hw = plane_offsets(hw, W, sgh, sgw, HW_FLAT, USE_INT64)
    if USE_INT64:
        hw = hw.to(tl.int64)
    g_ptrs = g_ptr + n * sgn + t * sgt + (cc * sgc)[:, None] + g_hw[None, :]
    # grad[n, t, m, c, hw] (contiguous), starting at m = 0; M = num_diffs + 1
    gf_ptrs = gf_ptr + (((n * T + t) * (num_diffs + 1)) * C + cc)[:, None] * HW + hw[None, :]
    if HAS_SCALE:
        s = tl.load(scale_ptr + cc, mask=cc < C, other=1.0).to(ACC)[:, None]
    ty = gf_ptr.dtype.element_ty

    # grad[m] = gs[m-1] - gs[m] with gs = scale * g (the reference's order of
    # operations: scale first, then add/subtract), the missing ends being 0.
    prev = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for _m in range(0, num_diffs):
        cur = tl.load(g_ptrs, mask=mask, other=0).to(ACC)
        if HAS_SCALE:
            cur = cur * s
        tl.store(gf_ptrs, (prev - cur).to(ty), mask=mask)
        g_ptrs += g_j_stride
        gf_ptrs += gf_m_stride
        prev = cur
    tl.store(gf_ptrs, prev.to(ty), mask=mask)


def _blocks(C: int, HW: int, elem_bytes: int, interp: bool, block_c: Optional[int], block_hw: Optional[int]):
    """``(BLOCK_C, BLOCK_HW, num_warps)``.

    GPU: tiles of 1024 elements (2048 for 1-byte uint8 frames, so that each
    thread still moves 16-byte vectors), 4 warps: a streaming kernel with M loads
    and M-1 stores per tile, where more in-flight programs beat bigger tiles.
    Interpreter: up to 16384 elements per program (its cost is per program).
    """
    if interp:
        tile = 16384
    else:
        tile = 2048 if elem_bytes == 1 else 1024
    bhw = check_block("block_hw", block_hw) if block_hw is not None else min(next_pow2(HW), tile)
    bc = check_block("block_c", block_c) if block_c is not None else min(next_pow2(C), max(1, tile // bhw))
    warps = 4 if bc * bhw <= 2048 else 8
    return bc, bhw, warps


def _scale_arg(scale: Optional[torch.Tensor], device: torch.device):
    if scale is None:
        return None
    return scale.to(device=device, dtype=torch.float32).contiguous()


def frame_diff_concat_forward(
    frames: torch.Tensor,
    scale: Optional[torch.Tensor],
    out_dtype: torch.dtype,
    *,
    block_c: Optional[int] = None,
    block_hw: Optional[int] = None,
    force_int64: bool = False,
) -> torch.Tensor:
    """Differences of consecutive local frames, concatenated along channels.

    Args:
        frames: ``Tensor[N, T, M, C, H, W]`` (uint8 or floating, any strides, M >= 2,
            numel > 0), a CUDA tensor or a CPU tensor under ``TRITON_INTERPRET=1``.
        scale: ``None`` or float32 ``Tensor[C]`` multiplied into each difference.
        out_dtype: floating dtype of the result.
        block_c, block_hw, force_int64: tuning/testing hooks; leave at the defaults.

    Returns:
        A new contiguous ``Tensor[N, (M-1)*C, T, H, W]`` of ``out_dtype``.
    """
    check_launchable(_frame_diff_concat_fwd_kernel, frames, "frame_diff_concat_forward")
    N, T, M, C, H, W = frames.shape
    HW = H * W
    out = torch.empty((N, (M - 1) * C, T, H, W), dtype=out_dtype, device=frames.device)
    bc, bhw, warps = _blocks(C, HW, frames.element_size(), interpreting(frames), block_c, block_hw)
    n_hw, n_cb = triton.cdiv(HW, bhw), triton.cdiv(C, bc)
    grid = n_hw * n_cb * T * N
    if grid >= 2**31 or HW >= 2**31:
        raise ValueError(f"frame_diff_concat: shape {tuple(frames.shape)} too large for the Triton kernels")
    sfn, sft, sfm, sfc, sfh, sfw = frames.stride()
    flat, s_plane = hw_layout(H, W, sfh, sfw)
    scale = _scale_arg(scale, frames.device)
    use64 = bool(force_int64) or needs_int64(frames, out)
    with device_guard(frames):
        _frame_diff_concat_fwd_kernel[(grid,)](
            frames, scale if scale is not None else out, out,
            T, C, W, HW,
            sfn, sft, sfm, sfc, sfh, s_plane,
            M - 1, C * T * HW,
            n_hw, n_cb,
            HAS_SCALE=scale is not None, BLOCK_C=bc, BLOCK_HW=bhw,
            HW_FLAT=flat, USE_INT64=use64, ACC=acc_dtype(frames.dtype, out_dtype),
            num_warps=warps,
            enable_fp_fusion=False,  # no FMA contraction: round each op as the reference does
        )
    return out


def frame_diff_concat_backward(
    grad_out: torch.Tensor,
    scale: Optional[torch.Tensor],
    num_local: int,
    frames_dtype: torch.dtype,
    *,
    block_c: Optional[int] = None,
    block_hw: Optional[int] = None,
    force_int64: bool = False,
) -> torch.Tensor:
    """Gradient of :func:`frame_diff_concat_forward` with respect to the frames.

    Args:
        grad_out: ``Tensor[N, (M-1)*C, T, H, W]``, any strides, any float dtype.
        scale: ``None`` or float32 ``Tensor[C]`` (as in the forward).
        num_local: ``M >= 2``.
        frames_dtype: dtype of the result (the frames' dtype).

    Returns:
        A new contiguous ``Tensor[N, T, M, C, H, W]`` of ``frames_dtype``.
    """
    check_launchable(_frame_diff_concat_bwd_kernel, grad_out, "frame_diff_concat_backward")
    N, MC, T, H, W = grad_out.shape
    M = int(num_local)
    C = MC // (M - 1)
    HW = H * W
    gf = torch.empty((N, T, M, C, H, W), dtype=frames_dtype, device=grad_out.device)
    elem = torch.empty((), dtype=frames_dtype).element_size()
    bc, bhw, warps = _blocks(C, HW, elem, interpreting(grad_out), block_c, block_hw)
    n_hw, n_cb = triton.cdiv(HW, bhw), triton.cdiv(C, bc)
    grid = n_hw * n_cb * T * N
    if grid >= 2**31 or HW >= 2**31:
        raise ValueError(f"frame_diff_concat_backward: shape {tuple(grad_out.shape)} too large for the Triton kernels")
    sgn, sgc, sgt, sgh, sgw = grad_out.stride()
    flat, s_plane = hw_layout(H, W, sgh, sgw)
    scale = _scale_arg(scale, grad_out.device)
    use64 = bool(force_int64) or needs_int64(grad_out, gf)
    with device_guard(grad_out):
        _frame_diff_concat_bwd_kernel[(grid,)](
            grad_out, scale if scale is not None else gf, gf,
            T, C, W, HW,
            sgn, sgc, sgt, sgh, s_plane,
            M - 1, C * sgc, C * HW,
            n_hw, n_cb,
            HAS_SCALE=scale is not None, BLOCK_C=bc, BLOCK_HW=bhw,
            HW_FLAT=flat, USE_INT64=use64, ACC=acc_dtype(grad_out.dtype, frames_dtype),
            num_warps=warps,
            enable_fp_fusion=False,  # no FMA contraction: round each op as the reference does
        )
    return gf
