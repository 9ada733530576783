"""Temporal-difference ops of TDS-CLIP, as ``torch.library`` custom ops.

Public functions (ordinary tensors in, ordinary tensors out):

* :func:`temporal_pool_diff` -- the TD-Adapter core: temporal max-pool minus input,
  with an optional channel-mean mix (spec 4.2(a) step 6).
* :func:`frame_diff_concat` -- the SME-Adapter input: differences of M consecutive
  local frames concatenated along channels, with optional on-the-fly uint8
  normalisation (spec 3.1, eq. 2 of the paper).
* :func:`official_frames_view` -- the official loader's ``(N*T, M*C, H, W)`` tensor
  seen as ``(N, T, M, C, H, W)``.

Each op exists once, as ``torch.ops.tdsk.<name>`` (plus a ``*_backward`` op), with
a fake (meta) implementation and autograd, so ``torch.compile(fullgraph=True)``
traces through it. The device kernels plug into that one op:

=========  ===========================================  ===========================
device     implementation                               fallback
=========  ===========================================  ===========================
CPU        C++ ``at::parallel_for`` kernels (tdsk._C)   :mod:`tdsk.ops.reference`
CUDA       Triton kernels (``tdsk.kernels``)            :mod:`tdsk.ops.reference`
other      :mod:`tdsk.ops.reference`
=========  ===========================================  ===========================
"""
import math
import numbers
from typing import Optional, Sequence, Union

import torch

from tdsk.ops import reference
from tdsk.ops._backends import cpu_kernels, triton_kernels

__all__ = ["temporal_pool_diff", "frame_diff_concat", "official_frames_view"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
Stat = Union[torch.Tensor, Sequence[float], None]


def _device_backend(device: torch.device):
    """The compiled kernels serving ``device``, or ``None`` (then: the reference)."""
    if device.type == "cpu":
        return cpu_kernels()
    if device.type == "cuda":
        return triton_kernels()
    return None


# ---------------------------------------------------------------------------
# temporal_pool_diff
# ---------------------------------------------------------------------------

def _temporal_pool_diff_reference_backward(grad_out, x, kernel_size, channel_mix):
    # Written out by hand (autograd is not available below the op's autograd
    # layer). Same rule as max_pool3d: the earliest maximal frame of the window
    # receives the gradient (torch.argmax documents first-index tie breaking).
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xo, g = x.to(work), grad_out.to(work)
    channels, frames, pad = x.shape[1], x.shape[2], kernel_size // 2
    grad_d = (1.0 - channel_mix) * g + (channel_mix / channels) * g.sum(dim=1, keepdim=True)
    padded = torch.nn.functional.pad(xo, (0, 0, 0, 0, pad, pad), value=float("-inf"))
    windows = padded.unfold(2, kernel_size, 1)  # [N, C, T, H, W, k]
    source = windows.argmax(dim=-1) + torch.arange(frames, device=x.device).view(1, 1, frames, 1, 1)
    grad_padded = torch.zeros_like(padded)
    grad_padded.scatter_add_(2, source, -grad_d)  # padded frame index = source (offset by pad)
    grad_x = grad_d + grad_padded[:, :, pad : pad + frames]
    return grad_x.to(x.dtype).contiguous()


def _temporal_pool_diff_impl(x: torch.Tensor, kernel_size: int, channel_mix: float) -> torch.Tensor:
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    backend = _device_backend(x.device)
    if backend is not None:
        return backend.temporal_pool_diff_forward(x, kernel_size, channel_mix)
    return reference.temporal_pool_diff_reference(x, kernel_size, channel_mix)


def _temporal_pool_diff_backward_impl(grad_out, x, kernel_size, channel_mix):
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    backend = _device_backend(x.device)
    if backend is not None:
        return backend.temporal_pool_diff_backward(grad_out, x, kernel_size, channel_mix)
    return _temporal_pool_diff_reference_backward(grad_out, x, kernel_size, channel_mix)


@torch.library.custom_op("tdsk::temporal_pool_diff", mutates_args=())
def _temporal_pool_diff_op(x: torch.Tensor, kernel_size: int, channel_mix: float) -> torch.Tensor:
    return _temporal_pool_diff_impl(x, kernel_size, channel_mix)


@torch.library.custom_op("tdsk::temporal_pool_diff_backward", mutates_args=())
def _temporal_pool_diff_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int, channel_mix: float
) -> torch.Tensor:
    return _temporal_pool_diff_backward_impl(grad_out, x, kernel_size, channel_mix)


@_temporal_pool_diff_op.register_fake
def _(x, kernel_size, channel_mix):
    torch._check(x.dim() == 5, lambda: "temporal_pool_diff: x must be 5-D [N, C, T, H, W]")
    return x.new_empty(x.shape)


@_temporal_pool_diff_backward_op.register_fake
def _(grad_out, x, kernel_size, channel_mix):
    torch._check(grad_out.shape == x.shape, lambda: "temporal_pool_diff_backward: grad shape mismatch")
    return x.new_empty(x.shape)


def _temporal_pool_diff_setup_context(ctx, inputs, output):
    x, kernel_size, channel_mix = inputs
    # Only x is saved: the backward recomputes the window argmax from it, so no
    # index tensor is kept alive between forward and backward.
    ctx.save_for_backward(x if ctx.needs_input_grad[0] else None)
    ctx.kernel_size = kernel_size
    ctx.channel_mix = channel_mix


def _temporal_pool_diff_backward(ctx, grad_out):
    (x,) = ctx.saved_tensors
    if x is None:
        return None, None, None
    grad_x = torch.ops.tdsk.temporal_pool_diff_backward(grad_out, x, ctx.kernel_size, ctx.channel_mix)
    return grad_x, None, None


_temporal_pool_diff_op.register_autograd(
    _temporal_pool_diff_backward, setup_context=_temporal_pool_diff_setup_context
)


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def temporal_pool_diff(x: torch.Tensor, kernel_size: int = 3, channel_mix: float = 0.0) -> torch.Tensor:
    """Temporal max-pool minus input, with an optional channel-mean mix (TD-Adapter core).

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
    _check_tensor("x", x)
    if x.dtype not in _FLOAT_DTYPES:
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


# ---------------------------------------------------------------------------
# frame_diff_concat
# ---------------------------------------------------------------------------
# The registered op takes a per-channel ``scale`` instead of mean/std: in a
# difference of two normalised frames the mean cancels,
#   (f1/255 - m)/s - (f0/255 - m)/s = (f1 - f0) * (1 / (255 s)),
# so kernels read two frames, subtract, multiply once. uint8 differences are
# exact integers, so this is also the more accurate form.

def _frame_diff_concat_scaled_reference(frames, scale, out_dtype):
    n, t, m, c, h, w = frames.shape
    work = torch.float64 if torch.float64 in (frames.dtype, out_dtype) else torch.float32
    f = frames.to(work)
    d = f[:, :, 1:] - f[:, :, :-1]
    if scale is not None:
        d = d * scale.to(work).view(c, 1, 1)
    return d.reshape(n, t, (m - 1) * c, h, w).permute(0, 2, 1, 3, 4).to(out_dtype).contiguous()


def _frame_diff_concat_scaled_reference_backward(grad_out, scale, num_local, frames_dtype):
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


def _frame_diff_backend(device: torch.device, scale):
    # The kernels take a float32 scale; a float64 one (float64 work) uses the reference.
    if scale is not None and scale.dtype != torch.float32:
        return None
    return _device_backend(device)


def _frame_diff_concat_impl(frames, scale, out_dtype):
    n, t, m, c, h, w = frames.shape
    if frames.numel() == 0:
        return torch.empty((n, (m - 1) * c, t, h, w), dtype=out_dtype, device=frames.device)
    backend = _frame_diff_backend(frames.device, scale)
    if backend is not None:
        return backend.frame_diff_concat_forward(frames, scale, out_dtype)
    return _frame_diff_concat_scaled_reference(frames, scale, out_dtype)


def _frame_diff_concat_backward_impl(grad_out, scale, num_local, frames_dtype):
    n, mc, t, h, w = grad_out.shape
    c = mc // (num_local - 1)
    if grad_out.numel() == 0:
        return torch.zeros((n, t, num_local, c, h, w), dtype=frames_dtype, device=grad_out.device)
    backend = _frame_diff_backend(grad_out.device, scale)
    if backend is not None:
        return backend.frame_diff_concat_backward(grad_out, scale, num_local, frames_dtype)
    return _frame_diff_concat_scaled_reference_backward(grad_out, scale, num_local, frames_dtype)


@torch.library.custom_op("tdsk::frame_diff_concat", mutates_args=())
def _frame_diff_concat_op(
    frames: torch.Tensor, scale: Optional[torch.Tensor], out_dtype: torch.dtype
) -> torch.Tensor:
    return _frame_diff_concat_impl(frames, scale, out_dtype)


@torch.library.custom_op("tdsk::frame_diff_concat_backward", mutates_args=())
def _frame_diff_concat_backward_op(
    grad_out: torch.Tensor, scale: Optional[torch.Tensor], num_local: int, frames_dtype: torch.dtype
) -> torch.Tensor:
    return _frame_diff_concat_backward_impl(grad_out, scale, num_local, frames_dtype)


@_frame_diff_concat_op.register_fake
def _(frames, scale, out_dtype):
    torch._check(frames.dim() == 6, lambda: "frame_diff_concat: frames must be 6-D [N, T, M, C, H, W]")
    n, t, m, c, h, w = frames.shape
    return frames.new_empty((n, (m - 1) * c, t, h, w), dtype=out_dtype)


@_frame_diff_concat_backward_op.register_fake
def _(grad_out, scale, num_local, frames_dtype):
    n, mc, t, h, w = grad_out.shape
    c = mc // (num_local - 1)
    return grad_out.new_empty((n, t, num_local, c, h, w), dtype=frames_dtype)


def _frame_diff_concat_setup_context(ctx, inputs, output):
    frames, scale, out_dtype = inputs
    ctx.save_for_backward(scale)
    ctx.num_local = frames.shape[2]
    ctx.frames_dtype = frames.dtype


def _frame_diff_concat_backward(ctx, grad_out):
    (scale,) = ctx.saved_tensors
    grad = torch.ops.tdsk.frame_diff_concat_backward(grad_out, scale, ctx.num_local, ctx.frames_dtype)
    return grad, None, None


_frame_diff_concat_op.register_autograd(_frame_diff_concat_backward, setup_context=_frame_diff_concat_setup_context)


# Statistics. Their *values* must be checked (finite; std > 0), and that check
# must never become a data-dependent guard in a traced graph (torch.compile with
# fullgraph=True would fail on ``bool(tensor)``):
#
# * Python sequences (the usual case, e.g. CLIP's constants) are checked as Python
#   floats and the scale is computed in Python: nothing data-dependent is traced.
# * Tensor statistics go through the small ``tdsk::frame_diff_scale`` op, whose real
#   implementation checks the values (eager, and at run time of a compiled graph)
#   and whose fake implementation only propagates the shape.

def _stat_floats(name: str, value, channels: int) -> list:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"frame_diff_concat: {name} must be a tensor or a sequence of {channels} floats, "
            f"got {type(value).__name__}"
        ) from exc
    if len(vals) != channels:
        raise ValueError(
            f"frame_diff_concat: {name} must have one value per channel (C={channels}), "
            f"got shape ({len(vals)},)"
        )
    return vals


def _check_stat_values(mean: list, std: list) -> None:
    """Value checks on Python floats (shared by the sequence path and the scale op)."""
    for name, vals in (("mean", mean), ("std", std)):
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"frame_diff_concat: {name} must be finite, got {vals}")
    if not all(v > 0 for v in std):
        raise ValueError(f"frame_diff_concat: std must be > 0, got {std}")


def _check_stat_tensor(name: str, value: torch.Tensor, channels: int, device: torch.device) -> torch.Tensor:
    """Metadata-only checks (device, shape): safe to trace."""
    if value.device != device:
        raise ValueError(
            f"frame_diff_concat: {name} is on {value.device} but frames are on {device}; "
            "put them on the same device"
        )
    if value.dim() != 1 or value.shape[0] != channels:
        raise ValueError(
            f"frame_diff_concat: {name} must have one value per channel (C={channels}), "
            f"got shape {tuple(value.shape)}"
        )
    if not (value.is_floating_point() or value.dtype in (torch.uint8, torch.int8, torch.int16,
                                                          torch.int32, torch.int64)):
        raise TypeError(f"frame_diff_concat: {name} must be a real tensor, got {value.dtype}")
    return value.detach()


@torch.library.custom_op("tdsk::frame_diff_scale", mutates_args=())
def _frame_diff_scale_op(mean: torch.Tensor, std: torch.Tensor, divisor: float, dtype: torch.dtype) -> torch.Tensor:
    """``1 / (std * divisor)`` in float64, rounded once to ``dtype``, after checking the values."""
    m64, s64 = mean.to(torch.float64), std.to(torch.float64)
    if not bool(torch.isfinite(m64).all()):
        raise ValueError(f"frame_diff_concat: mean must be finite, got {m64.tolist()}")
    if not bool(torch.isfinite(s64).all()):
        raise ValueError(f"frame_diff_concat: std must be finite, got {s64.tolist()}")
    if not bool((s64 > 0).all()):
        raise ValueError(f"frame_diff_concat: std must be > 0, got {s64.tolist()}")
    return (1.0 / (s64 * divisor)).to(dtype)


@_frame_diff_scale_op.register_fake
def _(mean, std, divisor, dtype):
    return std.new_empty(std.shape, dtype=dtype)


def _frame_diff_scale(mean: Stat, std: Stat, channels: int, device: torch.device, divisor: float,
                      dtype: torch.dtype) -> torch.Tensor:
    if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
        mean_t = (_check_stat_tensor("mean", mean, channels, device) if isinstance(mean, torch.Tensor)
                  else torch.tensor(_stat_floats("mean", mean, channels), dtype=torch.float64, device=device))
        std_t = (_check_stat_tensor("std", std, channels, device) if isinstance(std, torch.Tensor)
                 else torch.tensor(_stat_floats("std", std, channels), dtype=torch.float64, device=device))
        return torch.ops.tdsk.frame_diff_scale(mean_t, std_t, float(divisor), dtype)
    mean_f = _stat_floats("mean", mean, channels)
    std_f = _stat_floats("std", std, channels)
    _check_stat_values(mean_f, std_f)
    # Python floats are float64: the same float64 division as the tensor path.
    return torch.tensor([1.0 / (v * divisor) for v in std_f], dtype=dtype, device=device)


def frame_diff_concat(
    frames: torch.Tensor,
    mean: Stat = None,
    std: Stat = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Differences of consecutive local frames, concatenated along channels (SME-Adapter input).

    Args:
        frames: ``Tensor[N, T, M, C, H, W]``: ``M >= 2`` consecutive local frames for
            each of ``T`` segments of ``N`` clips (``M = 5`` in the official model),
            any strides. Floating (already normalised, or in [0, 1] pixel units when
            ``mean``/``std`` are given) or ``uint8`` (0..255, as a GPU decoder
            delivers them; then ``mean`` and ``std`` are required).
            The official loader's ``(N*T, M*C, H, W)`` tensor is a view of this layout:
            ``official.view(N, T, M, C, H, W)`` (see :func:`official_frames_view`).
        mean, std: optional per-channel statistics in [0, 1] pixel units (e.g. CLIP's),
            tensors on ``frames``' device or sequences of ``C`` floats. Frames are
            normalised as ``(f / 255 - mean) / std`` (uint8) or ``(f - mean) / std``
            (floating) before differencing.
        out_dtype: floating dtype of the result; default float32 for uint8 input,
            else ``frames.dtype``.

    Returns:
        A new contiguous ``Tensor[N, (M-1)*C, T, H, W]`` with
        ``out[:, j*C + c, t] = f[:, t, j+1, c] - f[:, t, j, c]`` (the channel order the
        official checkpoint's ``side_conv1_c5`` expects). Differentiable with respect
        to floating ``frames`` (``mean``/``std`` are constants).

    Raises:
        TypeError: unsupported dtype, integer frames without ``mean``/``std``.
        ValueError: wrong rank, ``M < 2``, only one of ``mean``/``std``, a statistic
            of the wrong length, a non-finite statistic, non-positive ``std``, mixed
            devices. The value checks never put a data-dependent guard into a
            ``torch.compile`` graph: sequences are checked as Python floats, tensors
            inside the ``tdsk::frame_diff_scale`` op when it runs.
    """
    _check_tensor("frames", frames)
    if frames.dim() != 6:
        raise ValueError(
            f"frame_diff_concat: frames must be Tensor[N, T, M, C, H, W] (6-D), got {frames.dim()}-D "
            f"shape {tuple(frames.shape)}"
        )
    n, t, m, c, h, w = frames.shape
    if m < 2:
        raise ValueError(f"frame_diff_concat: need M >= 2 local frames per segment (dim 2), got M={m}")
    is_uint8 = frames.dtype == torch.uint8
    if not (is_uint8 or frames.dtype in _FLOAT_DTYPES):
        raise TypeError(
            f"frame_diff_concat: frames must be uint8 or float32/float16/bfloat16/float64, got {frames.dtype}"
        )
    if (mean is None) != (std is None):
        raise ValueError("frame_diff_concat: pass both mean and std, or neither")
    if is_uint8 and mean is None:
        raise TypeError(
            "frame_diff_concat: integer (uint8) frames need mean= and std= to be normalised; "
            "for CLIP use mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)"
        )
    if out_dtype is None:
        out_dtype = torch.float32 if is_uint8 else frames.dtype
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"frame_diff_concat: out_dtype must be a floating torch.dtype, got {out_dtype!r}")

    scale = None
    if mean is not None:
        # mean is validated but otherwise unused: it cancels in a difference.
        # float64 division, then rounded once to float32 for the kernels (float64
        # work keeps a float64 scale: full precision for validation runs).
        wide = torch.float64 in (frames.dtype, out_dtype)
        scale = _frame_diff_scale(mean, std, c, frames.device, 255.0 if is_uint8 else 1.0,
                                  torch.float64 if wide else torch.float32)
    return torch.ops.tdsk.frame_diff_concat(frames, scale, out_dtype)


def official_frames_view(x: torch.Tensor, num_segments: int, num_local: int = 5, channels: int = 3) -> torch.Tensor:
    """View the official loader's ``(N*T, M*C, H, W)`` tensor as ``(N, T, M, C, H, W)``.

    The official code regroups ``(b t m) c h w -> (b t) (m c) h w``; on contiguous
    memory both are the same bytes, so this is a ``view`` (no copy) when possible and
    a ``reshape`` otherwise.
    """
    _check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"official_frames_view: x must be (N*T, M*C, H, W), got shape {tuple(x.shape)}")
    bt, mc, h, w = x.shape
    if mc != num_local * channels:
        raise ValueError(
            f"official_frames_view: dim 1 must be M*C = {num_local}*{channels} = {num_local * channels}, got {mc}"
        )
    if bt % num_segments != 0:
        raise ValueError(f"official_frames_view: dim 0 ({bt}) is not a multiple of num_segments={num_segments}")
    return x.reshape(bt // num_segments, num_segments, num_local, channels, h, w)
