"""Triton kernels of ``temporal_pool_diff`` (TD-Adapter core, Eq. 4 of the TDS-CLIP paper), forward and backward.

Layouts
-------
* ``x``: ``Tensor[N, C, T, H, W]``, float32/float16/bfloat16/float64, **any strides**
  (all five are passed to the kernels; ``x`` is never copied to contiguous).
* ``grad_out`` (backward): ``Tensor[N, C, T, H, W]``, any strides.
* Results (``out``, ``grad_x``): new contiguous ``Tensor[N, C, T, H, W]`` of ``x``'s dtype.

Semantics (must match :mod:`tdsk.ops.reference`: ``temporal_pool_diff_reference``
and the hand-written ``temporal_pool_diff_backward_reference``)
------------------------------------------------------------------------------------
``p[t] = max(x[t-P .. t+P] that exist)`` with ``P = k // 2`` (padding never wins),
``d = x - p``, ``out = (1 - a) * d + a * mean_c(d)``. All arithmetic is done in
float32 (float64 for float64 inputs) and rounded once on store, as PyTorch's own
"opmath" does for half types.

The window max is a left-to-right scan with a strict ``>`` (a NaN is taken unless a
NaN was already taken). That is exactly the loop of PyTorch's ``max_pool3d``, so the
*value* of ``p`` -- including which of ``-0.0`` / ``+0.0`` wins a tie -- is the same
as the reference's, and with ``a == 0`` the float32 result is bit-exact.

Backward: ``g_d = (1 - a) * g + (a / C) * sum_c g`` and
``grad_x[t] = g_d[t] - sum(g_d[t'] for t' whose window argmax is t)``. The argmax is
the *earliest* maximal frame of the window (what the scan above picks, what
``max_pool3d`` and ``torch.argmax`` pick), recomputed from ``x``: no index tensor is
saved between forward and backward.

Kernel design
-------------
One program per ``(n, t, block of H*W)`` (and, when ``a == 0``, per block of
channels too), a 2-D ``[BLOCK_C, BLOCK_HW]`` register tile with the contiguous
``H*W`` axis innermost (coalesced, vectorised when its stride is 1). The ``2P + 1``
frames of a window are re-read by the neighbouring ``t`` programs; the grid order
(HW block fastest, then ``t``) keeps those programs in flight together, so the
re-reads hit L2 and DRAM sees about one read of ``x`` and one write of ``out``.

The channel mean needs all ``C`` channels of a position. When they fit one tile
(``C <= 32`` at the default sizes, e.g. the TD-Adapter's R = 20) the mean is a
register reduction; otherwise a first loop over channel blocks sums ``d`` and a
second one recomputes ``d`` (from L1/L2) and writes. With ``a == 0`` that pass is
skipped and channel blocks become separate programs instead.

Offsets are int32 unless some tensor's address range reaches 2**31 elements; the
launcher then sets the ``USE_INT64`` constexpr and the kernels cast the program
indices (``n``, ``t``, channel and pixel indices) to int64 before they meet a
stride, so every product is 64-bit (a separate compiled variant; the common case
keeps cheaper 32-bit address arithmetic). ``H * W`` and the grid size must stay
below 2**31.
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

__all__ = ["temporal_pool_diff_forward", "temporal_pool_diff_backward"]


# ---------------------------------------------------------------------------
# jit helpers
# ---------------------------------------------------------------------------

@triton.jit
def _pool_diff_tile(x_n_ptr, c0, C, x_hw, hw_mask, t, lo, hi, sxc, sxt,
                    PAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                    USE_INT64: tl.constexpr, ACC: tl.constexpr):
    """``d = x[t] - max(x[t-PAD .. t+PAD])`` for channels ``c0 .. c0+BLOCK_C``.

    Returns ``(d, cc, m2)``: the [BLOCK_C, BLOCK_HW] tile (0 where masked), the
    channel indices and the tile mask. ``lo <= j <= hi`` are the offsets ``j``
    whose frame ``t + j`` exists.
    """
    cc = c0 + tl.arange(0, BLOCK_C)
    m2 = (cc < C)[:, None] & hw_mask[None, :]
    if USE_INT64:
        cc = cc.to(tl.int64)
    q = x_n_ptr + (cc * sxc)[:, None] + x_hw[None, :] + (t - PAD) * sxt
    # -inf where the tile is valid; 0 in masked-off lanes so that they compute
    # 0 - 0 rather than -inf - (-inf) (NaN; harmless, but numpy warns about it)
    p = tl.where(m2, float("-inf"), 0.0).to(ACC)
    xt = p
    # Left-to-right scan with strict ">" (max_pool3d's loop): missing frames load
    # -inf and never win; a NaN wins unless one already did (NaN propagates). The
    # scan order also decides which of -0.0 / +0.0 is the max, as in the reference.
    for j in tl.static_range(-PAD, PAD + 1):
        ok = ((lo <= j) & (hi >= j))[None, :]
        v = tl.load(q, mask=m2 & ok, other=float("-inf")).to(ACC)
        take = (v > p) | ((v != v) & (p == p))
        p = tl.where(take, v, p)
        if j == 0:
            xt = v
        q += sxt
    return tl.where(m2, xt - p, 0.0), cc, m2


@triton.jit
def _pool_diff_bwd_tile(x_n_ptr, g_n_ptr, c0, C, x_hw, g_hw, hw_mask, t, lo, hi,
                        sxc, sxt, sgc, sgt, w1, w2, S2d, kk,
                        PAD: tl.constexpr, MIX: tl.constexpr, SINGLE_C: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                        USE_INT64: tl.constexpr, ACC: tl.constexpr):
    """``grad_x[t]`` for channels ``c0 .. c0+BLOCK_C``; returns ``(grad, cc, m2)``.

    Frame ``t`` is the argmax of the window of output frame ``t + i`` iff it beats
    every *earlier* frame of that window strictly and is not beaten by any *later*
    one (the earliest maximum wins). Both conditions are monotone in ``i``, so
    instead of scanning all 2P+1 windows we find, per element,

    * ``j_lo``: the latest earlier offset (in -2P..-1) whose frame x[t] does not
      strictly beat: the windows with ``i - P > j_lo`` are fine on the left;
    * ``j_hi``: the earliest later offset (in 1..2P) whose frame beats x[t]:
      the windows with ``i + P < j_hi`` are fine on the right;

    so ``t`` is the argmax of the windows ``i_lo <= i <= i_hi``: 4P + 1 loads of x
    and 2P + 1 of g per tile, instead of (2P + 1)**2 comparisons.

    With a channel mix, ``g_d = w1 * g + w2 * sum_c g``; the channel sums come
    from this tile (``SINGLE_C``) or from row ``i + PAD`` of ``S2d``.
    """
    cc = c0 + tl.arange(0, BLOCK_C)
    m2 = (cc < C)[:, None] & hw_mask[None, :]
    if USE_INT64:
        cc = cc.to(tl.int64)
    xp = x_n_ptr + (cc * sxc)[:, None] + x_hw[None, :]
    xt = tl.load(xp + t * sxt, mask=m2, other=0.0).to(ACC)
    xt_nan = xt != xt

    j_lo = tl.full([BLOCK_C, BLOCK_HW], -2 * PAD - 1, tl.int32)
    j_hi = tl.full([BLOCK_C, BLOCK_HW], 2 * PAD + 1, tl.int32)
    q = xp + (t - 2 * PAD) * sxt
    for j in tl.static_range(-2 * PAD, 2 * PAD + 1):
        if j != 0:
            ok = ((lo <= j) & (hi >= j))[None, :]
            v = tl.load(q, mask=m2 & ok, other=0.0).to(ACC)
            if j < 0:
                # x[t] must strictly beat an earlier frame (a tie goes to the
                # earlier one); a NaN x[t] beats any non-NaN earlier frame.
                # Ascending j: the last write is the latest such frame.
                lost = ok & ~((xt > v) | (xt_nan & (v == v)))
                j_lo = tl.where(lost, j, j_lo)
            else:
                # a later frame beats x[t] unless x[t] >= it (or x[t] is NaN).
                # Ascending j: keep the first (earliest) such frame.
                lost = ok & ~((xt >= v) | xt_nan)
                j_hi = tl.where(lost & (j_hi > j), j, j_hi)
        q += sxt
    i_lo = j_lo + (PAD + 1)
    i_hi = j_hi - (PAD + 1)

    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    gd_t = acc
    gq = g_n_ptr + (cc * sgc)[:, None] + g_hw[None, :] + (t - PAD) * sgt
    # Ascending t' and accumulation from 0: with a == 0 this sums in the same
    # order as the reference's scatter_add, so float32 results are bit-exact.
    for i in tl.static_range(-PAD, PAD + 1):
        ok = ((lo <= i) & (hi >= i))[None, :]
        g = tl.load(gq, mask=m2 & ok, other=0.0).to(ACC)
        if MIX:
            if SINGLE_C:
                s_i = tl.sum(g, axis=0)  # all channels are in this tile
            else:
                s_i = tl.sum(tl.where(kk[:, None] == i + PAD, S2d, 0.0), axis=0)
            gd = w1 * g + w2 * s_i[None, :]
        else:
            gd = g
        if i == 0:
            gd_t = gd
        wins = ok & (i_lo <= i) & (i_hi >= i)
        acc += tl.where(wins, gd, 0.0)
        gq += sgt
    return gd_t - acc, cc, m2


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

@triton.jit
def _temporal_pool_diff_fwd_kernel(
    x_ptr, out_ptr,
    C, T, W, HW,
    sxn, sxc, sxt, sxh, sxw,
    one_minus_a: tl.float64, a_over_c: tl.float64,  # float64 so fp64 inputs keep full precision
    n_hw_blocks, n_c_blocks,
    PAD: tl.constexpr, MIX: tl.constexpr, SINGLE_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    X_HW_FLAT: tl.constexpr, USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    n, cb, t, hw_blk = program_coords(n_hw_blocks, T, n_c_blocks, USE_INT64)

    hw = hw_blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_mask = hw < HW
    x_hw = plane_offsets(hw, W, sxh, sxw, X_HW_FLAT, USE_INT64)
    if USE_INT64:
        hw = hw.to(tl.int64)
    # frame t + j exists iff lo <= j <= hi; [BLOCK_HW] vectors rather than scalars
    # because the interpreter rejects ``tensor_mask & scalar_bool``
    lo = tl.zeros([BLOCK_HW], dtype=tl.int32) - t
    hi = lo + (T - 1)
    x_n_ptr = x_ptr + n * sxn
    out_nt_ptr = out_ptr + n * C * T * HW + t * HW + hw[None, :]  # out is contiguous
    w1 = tl.full([], one_minus_a, ACC)  # (a Python float under the interpreter)
    w2 = tl.full([], a_over_c, ACC)
    ty = out_ptr.dtype.element_ty

    if MIX:
        if SINGLE_C:
            d, cc, m2 = _pool_diff_tile(x_n_ptr, 0, C, x_hw, hw_mask, t, lo, hi, sxc, sxt,
                                        PAD, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
            s = tl.sum(d, axis=0)
            o = w1 * d + w2 * s[None, :]
            tl.store(out_nt_ptr + (cc * T * HW)[:, None], o.to(ty), mask=m2)
        else:
            # pass 1: channel sum of d; pass 2: recompute d (L1/L2 hits) and write.
            s = tl.zeros([BLOCK_HW], ACC)
            for c0 in range(0, C, BLOCK_C):
                d, cc, m2 = _pool_diff_tile(x_n_ptr, c0, C, x_hw, hw_mask, t, lo, hi, sxc, sxt,
                                            PAD, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
                s += tl.sum(d, axis=0)
            for c0 in range(0, C, BLOCK_C):
                d, cc, m2 = _pool_diff_tile(x_n_ptr, c0, C, x_hw, hw_mask, t, lo, hi, sxc, sxt,
                                            PAD, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
                o = w1 * d + w2 * s[None, :]
                tl.store(out_nt_ptr + (cc * T * HW)[:, None], o.to(ty), mask=m2)
    else:
        d, cc, m2 = _pool_diff_tile(x_n_ptr, cb * BLOCK_C, C, x_hw, hw_mask, t, lo, hi, sxc, sxt,
                                    PAD, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
        tl.store(out_nt_ptr + (cc * T * HW)[:, None], d.to(ty), mask=m2)


@triton.jit
def _temporal_pool_diff_bwd_kernel(
    g_ptr, x_ptr, gx_ptr,
    C, T, W, HW,
    sgn, sgc, sgt, sgh, sgw,
    sxn, sxc, sxt, sxh, sxw,
    one_minus_a: tl.float64, a_over_c: tl.float64,
    n_hw_blocks, n_c_blocks,
    PAD: tl.constexpr, KP: tl.constexpr, MIX: tl.constexpr, SINGLE_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    X_HW_FLAT: tl.constexpr, G_HW_FLAT: tl.constexpr,
    USE_INT64: tl.constexpr, ACC: tl.constexpr,
):
    n, cb, t, hw_blk = program_coords(n_hw_blocks, T, n_c_blocks, USE_INT64)

    hw = hw_blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_mask = hw < HW
    x_hw = plane_offsets(hw, W, sxh, sxw, X_HW_FLAT, USE_INT64)
    g_hw = plane_offsets(hw, W, sgh, sgw, G_HW_FLAT, USE_INT64)
    if USE_INT64:
        hw = hw.to(tl.int64)
    lo = tl.zeros([BLOCK_HW], dtype=tl.int32) - t  # frame t + j exists iff lo <= j <= hi
    hi = lo + (T - 1)
    x_n_ptr = x_ptr + n * sxn
    g_n_ptr = g_ptr + n * sgn
    out_nt_ptr = gx_ptr + n * C * T * HW + t * HW + hw[None, :]
    w1 = tl.full([], one_minus_a, ACC)  # (a Python float under the interpreter)
    w2 = tl.full([], a_over_c, ACC)
    kk = tl.arange(0, KP)  # row i + PAD of S2d holds sum_c g[t + i]
    ty = gx_ptr.dtype.element_ty

    if MIX:
        if SINGLE_C:
            r, cc, m2 = _pool_diff_bwd_tile(x_n_ptr, g_n_ptr, 0, C, x_hw, g_hw, hw_mask, t, lo, hi,
                                            sxc, sxt, sgc, sgt, w1, w2, tl.zeros([KP, BLOCK_HW], ACC), kk,
                                            PAD, MIX, SINGLE_C, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
            tl.store(out_nt_ptr + (cc * T * HW)[:, None], r.to(ty), mask=m2)
        else:
            # pass 1: channel sums of g for the 2P+1 frames t-P..t+P (a [KP, BLOCK_HW] tile)
            S2d = tl.zeros([KP, BLOCK_HW], ACC)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                m2 = (cc < C)[:, None] & hw_mask[None, :]
                if USE_INT64:
                    cc = cc.to(tl.int64)
                gq = g_n_ptr + (cc * sgc)[:, None] + g_hw[None, :] + (t - PAD) * sgt
                for i in tl.static_range(-PAD, PAD + 1):
                    ok = ((lo <= i) & (hi >= i))[None, :]
                    g = tl.load(gq, mask=m2 & ok, other=0.0).to(ACC)
                    S2d += tl.where(kk[:, None] == i + PAD, tl.sum(g, axis=0)[None, :], 0.0)
                    gq += sgt
            # pass 2: gradients, channel block by channel block
            for c0 in range(0, C, BLOCK_C):
                r, cc, m2 = _pool_diff_bwd_tile(x_n_ptr, g_n_ptr, c0, C, x_hw, g_hw, hw_mask, t, lo, hi,
                                                sxc, sxt, sgc, sgt, w1, w2, S2d, kk,
                                                PAD, MIX, SINGLE_C, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
                tl.store(out_nt_ptr + (cc * T * HW)[:, None], r.to(ty), mask=m2)
    else:
        r, cc, m2 = _pool_diff_bwd_tile(x_n_ptr, g_n_ptr, cb * BLOCK_C, C, x_hw, g_hw, hw_mask, t, lo, hi,
                                        sxc, sxt, sgc, sgt, w1, w2, tl.zeros([KP, BLOCK_HW], ACC), kk,
                                        PAD, MIX, SINGLE_C, BLOCK_C, BLOCK_HW, USE_INT64, ACC)
        tl.store(out_nt_ptr + (cc * T * HW)[:, None], r.to(ty), mask=m2)


# ---------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------

def _blocks(C: int, HW: int, mix: bool, backward: bool, elem_bytes: int, interp: bool,
            block_c: Optional[int], block_hw: Optional[int]):
    """``(BLOCK_C, BLOCK_HW, num_warps)`` for one launch.

    GPU (H100 class; both kernels are memory bound, so the aim is many bytes in
    flight with no register spills and 16-byte vector accesses along ``H*W``):

    * forward: 2048-element tiles, 4 warps (16 values per thread, 4 fp32 vectors
      per frame load) when ``a == 0``: channel blocks are separate programs, so
      there is parallelism to spare; 4096 elements, 8 warps with a channel mix, so
      that up to 32 channels (the TD-Adapter's R = 20) share one tile and the mean
      needs no second pass.
    * backward: 2048-element tiles, 8 warps (8 values per thread): it keeps ~7
      tiles live (x[t], two argmax bounds, g, g_d[t], the sum, a load); 16 values
      per thread cost 110-185 registers in an sm_90 build, 8 per thread 44-97
      (139 at k = 7 with a mix), no spills.
    * float64 halves the tile (twice the registers per value).

    (Register counts: ``triton.compile`` for sm_90 + cuobjdump, at the TD-Adapter
    training shape and (8, 320, 16, 28, 28); forward 38-92 registers, no spills.
    Not timed: no GPU was available when these were chosen.)
    * with a mix, the HW block shrinks (down to 64: still >= 128-byte rows) before
      channels are split over several blocks.

    Under the interpreter the cost is per program, not per value, so tiles are as
    large as practical (up to 16384 values).
    """
    if interp:
        tile, max_hw, warps = 16384, 4096, 4
    elif backward:
        tile, max_hw, warps = 2048, 1024, 8
    else:
        tile, max_hw, warps = (4096, 1024, 8) if mix else (2048, 1024, 4)
    if elem_bytes == 8 and not interp:
        tile //= 2
    bhw = min(next_pow2(HW), max_hw)
    if mix:
        bhw = min(bhw, max(64, tile // next_pow2(C)))
    if block_hw is not None:
        bhw = check_block("block_hw", block_hw)
    bc = min(next_pow2(C), max(1, tile // bhw))
    if block_c is not None:
        bc = check_block("block_c", block_c)
    if block_c is not None or block_hw is not None:
        warps = 4 if bc * bhw <= 2048 else 8
    return bc, bhw, warps


def _common_args(x: torch.Tensor, kernel_size: int, channel_mix: float, backward: bool, block_c, block_hw):
    N, C, T, H, W = x.shape
    HW = H * W
    # Frames further than T-1 away never exist: clamping P changes no result and
    # bounds the unrolled loops (and compiled variants) by the clip length.
    pad = min(int(kernel_size) // 2, T - 1)
    mix = float(channel_mix) != 0.0
    bc, bhw, warps = _blocks(C, HW, mix, backward, x.element_size(), interpreting(x), block_c, block_hw)
    n_hw = triton.cdiv(HW, bhw)
    n_cb = 1 if mix else triton.cdiv(C, bc)
    grid = n_hw * T * n_cb * N
    if grid >= 2**31 or HW >= 2**31:
        raise ValueError(f"temporal_pool_diff: shape {tuple(x.shape)} too large for the Triton kernels")
    # 1 - a and a / C in Python (float64) arithmetic, as the reference does.
    return dict(
        C=C, T=T, W=W, HW=HW, pad=pad, mix=mix, bc=bc, bhw=bhw, warps=warps,
        n_hw=n_hw, n_cb=n_cb, grid=(grid,), w1=1.0 - float(channel_mix), w2=float(channel_mix) / C,
    )


def temporal_pool_diff_forward(
    x: torch.Tensor,
    kernel_size: int,
    channel_mix: float,
    *,
    block_c: Optional[int] = None,
    block_hw: Optional[int] = None,
    force_int64: bool = False,
) -> torch.Tensor:
    """``(1 - a) * d + a * mean_c(d)`` with ``d = x - maxpool_t(x)``; see the module docstring.

    Args:
        x: ``Tensor[N, C, T, H, W]`` (float32/16, bfloat16, float64; any strides; numel > 0),
            a CUDA tensor, or a CPU tensor under ``TRITON_INTERPRET=1``.
        kernel_size: odd temporal window ``k >= 1``.
        channel_mix: ``a`` in [0, 1]; ``a == 0`` compiles the mean away.
        block_c, block_hw, force_int64: tuning/testing hooks (powers of two; force the
            64-bit offset variant). Leave at the defaults.

    Returns:
        A new contiguous ``Tensor[N, C, T, H, W]`` of ``x.dtype``.
    """
    check_launchable(_temporal_pool_diff_fwd_kernel, x, "temporal_pool_diff_forward")
    a = _common_args(x, kernel_size, channel_mix, False, block_c, block_hw)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    sxn, sxc, sxt, sxh, sxw = x.stride()
    flat, s_plane = hw_layout(x.shape[3], x.shape[4], sxh, sxw)
    use64 = bool(force_int64) or needs_int64(x, out)
    with device_guard(x):
        _temporal_pool_diff_fwd_kernel[a["grid"]](
            x, out,
            a["C"], a["T"], a["W"], a["HW"],
            sxn, sxc, sxt, sxh, s_plane,
            a["w1"], a["w2"],
            a["n_hw"], a["n_cb"],
            PAD=a["pad"], MIX=a["mix"], SINGLE_C=a["bc"] >= a["C"],
            BLOCK_C=a["bc"], BLOCK_HW=a["bhw"],
            X_HW_FLAT=flat, USE_INT64=use64, ACC=acc_dtype(x.dtype),
            num_warps=a["warps"],
            enable_fp_fusion=False,  # no FMA contraction: round each op as the reference does
        )
    return out


def temporal_pool_diff_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    kernel_size: int,
    channel_mix: float,
    *,
    block_c: Optional[int] = None,
    block_hw: Optional[int] = None,
    force_int64: bool = False,
) -> torch.Tensor:
    """Gradient of :func:`temporal_pool_diff_forward` with respect to ``x``.

    Args:
        grad_out: ``Tensor[N, C, T, H, W]`` (any strides, any float dtype).
        x: the forward input (any strides); the window argmax is recomputed from it.
        kernel_size, channel_mix, block_c, block_hw, force_int64: as in the forward.

    Returns:
        A new contiguous ``Tensor[N, C, T, H, W]`` of ``x.dtype``. Computed in float32
        (float64 when ``x`` is float64) in one fused pass.
    """
    check_launchable(_temporal_pool_diff_bwd_kernel, x, "temporal_pool_diff_backward")
    a = _common_args(x, kernel_size, channel_mix, True, block_c, block_hw)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    sxn, sxc, sxt, sxh, sxw = x.stride()
    sgn, sgc, sgt, sgh, sgw = grad_out.stride()
    x_flat, sx_plane = hw_layout(x.shape[3], x.shape[4], sxh, sxw)
    g_flat, sg_plane = hw_layout(x.shape[3], x.shape[4], sgh, sgw)
    use64 = bool(force_int64) or needs_int64(x, grad_out, gx)
    with device_guard(x):
        _temporal_pool_diff_bwd_kernel[a["grid"]](
            grad_out, x, gx,
            a["C"], a["T"], a["W"], a["HW"],
            sgn, sgc, sgt, sgh, sg_plane,
            sxn, sxc, sxt, sxh, sx_plane,
            a["w1"], a["w2"],
            a["n_hw"], a["n_cb"],
            PAD=a["pad"], KP=next_pow2(2 * a["pad"] + 1), MIX=a["mix"], SINGLE_C=a["bc"] >= a["C"],
            BLOCK_C=a["bc"], BLOCK_HW=a["bhw"],
            X_HW_FLAT=x_flat, G_HW_FLAT=g_flat, USE_INT64=use64,
            ACC=acc_dtype(x.dtype),
            num_warps=a["warps"],
            enable_fp_fusion=False,  # no FMA contraction: round each op as the reference does
        )
    return gx
