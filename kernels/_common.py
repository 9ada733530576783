"""Helpers shared by the tdsk Triton kernels: launcher-side checks and the ``@triton.jit``
helpers every kernel uses (:func:`plane_offsets`, :func:`program_coords`)."""
import contextlib
import os
from typing import Sequence

import torch
import triton
import triton.language as tl

# Largest offset (in elements) that int32 index arithmetic may reach. Offsets are
# computed as sums of index * stride; when every *valid* element of every tensor
# a kernel touches lies below this bound, int32 arithmetic cannot overflow for a
# lane that is actually dereferenced (masked-off lanes may wrap, harmlessly: they
# are never loaded or stored).
INT32_LIMIT = 2**31 - 1

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


def interpreting(t: torch.Tensor) -> bool:
    """True when the launch will run under the Triton interpreter (CPU tensors)."""
    return t.device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_launchable(kernel, t: torch.Tensor, op: str) -> None:
    """A clear error instead of a Triton crash for a non-CUDA tensor outside the interpreter."""
    if t.device.type == "cuda":
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        raise ValueError(
            f"{op}: the Triton kernels take CUDA tensors (or CPU tensors when TRITON_INTERPRET=1 "
            f"was set before tdsk.kernels was imported); got a tensor on {t.device}"
        )


def max_offset(sizes: Sequence[int], strides: Sequence[int]) -> int:
    """Largest element offset of a strided tensor, ``sum((size - 1) * |stride|)``."""
    return sum((s - 1) * abs(st) for s, st in zip(sizes, strides) if s > 0)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether any tensor's address range (or element count) exceeds int32 offsets."""
    for t in tensors:
        if t.numel() > INT32_LIMIT or max_offset(t.shape, t.stride()) > INT32_LIMIT:
            return True
    return False


def acc_dtype(*dtypes: torch.dtype):
    """Accumulation ("opmath") dtype: float64 if any operand is float64, else float32."""
    return tl.float64 if torch.float64 in dtypes else tl.float32


def hw_layout(size_h: int, size_w: int, stride_h: int, stride_w: int):
    """``(flat, stride)``: whether the (H, W) plane is addressable as ``hw * stride``.

    When it is (the usual case: ``stride_h == W * stride_w``), kernels index the
    plane with one flat index, and for the common ``stride == 1`` Triton
    specialises the argument to the constant 1, which lets it emit vectorised,
    coalesced loads. Otherwise they fall back to ``h = hw // W, w = hw % W``.
    """
    if size_w == 1:
        return True, stride_h
    if size_h == 1 or stride_h == size_w * stride_w:
        return True, stride_w
    return False, stride_w


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the *current* device)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def check_block(name: str, value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value}")
    return value


@triton.jit
def plane_offsets(hw, W, stride_h, stride_w, FLAT: tl.constexpr, USE_INT64: tl.constexpr):
    """Element offsets of the flat pixel indices ``hw`` (int32) in an (H, W) plane.

    ``FLAT`` (see :func:`hw_layout`): ``hw * stride_w``; else ``h * stride_h + w * stride_w``.
    With ``USE_INT64`` the indices are widened before they meet a stride.
    """
    if FLAT:
        idx = hw
        if USE_INT64:
            idx = idx.to(tl.int64)
        off = idx * stride_w
    else:
        h = hw // W
        w = hw % W
        if USE_INT64:
            h = h.to(tl.int64)
            w = w.to(tl.int64)
        off = h * stride_h + w * stride_w
    return off


@triton.jit
def program_coords(n_hw_blocks, T, n_c_blocks, USE_INT64: tl.constexpr):
    """This program's ``(n, channel block, t, hw block)``; hw block fastest, then t, so
    the programs of neighbouring frames (which share window frames in
    ``temporal_pool_diff``) run together. Used by every tdsk kernel."""
    pid = tl.program_id(0)
    hw_blk = pid % n_hw_blocks
    rest = pid // n_hw_blocks
    t = rest % T
    rest = rest // T
    cb = rest % n_c_blocks
    n = rest // n_c_blocks
    if USE_INT64:
        n = n.to(tl.int64)
        t = t.to(tl.int64)
    return n, cb, t, hw_blk
