"""``frame_diff_concat``: the SME-Adapter input, as the custom op ``torch.ops.tdsk.frame_diff_concat``.

``D_i`` of Eq. 2 of the TDS-CLIP paper (Fig. 4): the differences of the M
consecutive local frames around each sampled frame, concatenated along channels,
with optional on-the-fly normalisation of uint8 frames (the official loader's
statistics; docs/sampling.md for how the local frames are sampled). Also
:func:`official_frames_view`, the official loader's ``(N*T, M*C, H, W)`` tensor seen
as ``(N, T, M, C, H, W)``.

This file holds the whole op: the public function (argument and statistics checks),
the registration (schema, fake kernel, autograd), the device kernels, and the small
``tdsk::frame_diff_scale`` op that turns tensor statistics into the kernels' scale:

* CPU: the C++ kernel of ``tdsk._C`` (registered on the CPU key, see
  :mod:`tdsk.ops._backends`);
* CUDA: the Triton launchers of ``tdsk.kernels`` (a float64 scale, i.e. float64
  work, takes the reference: the Triton kernels read a float32 scale);
* default (any device without its own kernel):
  :func:`tdsk.ops.reference.frame_diff_concat_scaled_reference` and
  :func:`tdsk.ops.reference.frame_diff_concat_backward_reference`.

The registered op takes a per-channel ``scale`` instead of mean/std: in a
difference of two normalised frames the mean cancels,
``(f1/255 - m)/s - (f0/255 - m)/s = (f1 - f0) * (1 / (255 s))``, so the kernels
read two frames, subtract and multiply once (uint8 differences are exact integers,
so this is also the more accurate form).
"""
import math
from typing import Optional, Sequence, Union

import torch

from tdsk.ops import reference
from tdsk.ops._backends import register_cpu_kernels, triton_kernels
from tdsk.ops._common import FLOAT_DTYPES, check_tensor

__all__ = ["frame_diff_concat", "official_frames_view"]

Stat = Union[torch.Tensor, Sequence[float], None]


# ---------------------------------------------------------------------------
# the ops and their default kernels (the reference)
# ---------------------------------------------------------------------------

@torch.library.custom_op("tdsk::frame_diff_concat", mutates_args=())
def _frame_diff_concat_op(
    frames: torch.Tensor, scale: Optional[torch.Tensor], out_dtype: torch.dtype
) -> torch.Tensor:
    n, t, m, c, h, w = frames.shape
    if frames.numel() == 0:
        return torch.empty((n, (m - 1) * c, t, h, w), dtype=out_dtype, device=frames.device)
    return reference.frame_diff_concat_scaled_reference(frames, scale, out_dtype)


@torch.library.custom_op("tdsk::frame_diff_concat_backward", mutates_args=())
def _frame_diff_concat_backward_op(
    grad_out: torch.Tensor, scale: Optional[torch.Tensor], num_local: int, frames_dtype: torch.dtype
) -> torch.Tensor:
    n, mc, t, h, w = grad_out.shape
    if grad_out.numel() == 0:
        c = mc // (num_local - 1)
        return torch.zeros((n, t, num_local, c, h, w), dtype=frames_dtype, device=grad_out.device)
    return reference.frame_diff_concat_backward_reference(grad_out, scale, num_local, frames_dtype)


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


def _setup_context(ctx, inputs, output):
    frames, scale, out_dtype = inputs
    ctx.save_for_backward(scale)
    ctx.num_local = frames.shape[2]
    ctx.frames_dtype = frames.dtype


def _backward(ctx, grad_out):
    (scale,) = ctx.saved_tensors
    grad = torch.ops.tdsk.frame_diff_concat_backward(grad_out, scale, ctx.num_local, ctx.frames_dtype)
    return grad, None, None


_frame_diff_concat_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# device kernels
# ---------------------------------------------------------------------------

register_cpu_kernels("frame_diff_concat", "frame_diff_concat_backward")

_triton = triton_kernels()
if _triton is not None:

    def _triton_reads(scale) -> bool:
        # The Triton kernels take a float32 scale; a float64 one (float64 work) uses the reference.
        return scale is None or scale.dtype == torch.float32

    @_frame_diff_concat_op.register_kernel("cuda")
    def _(frames, scale, out_dtype):
        n, t, m, c, h, w = frames.shape
        if frames.numel() == 0:  # the launchers take numel > 0
            return torch.empty((n, (m - 1) * c, t, h, w), dtype=out_dtype, device=frames.device)
        if not _triton_reads(scale):
            return reference.frame_diff_concat_scaled_reference(frames, scale, out_dtype)
        return _triton.frame_diff_concat_forward(frames, scale, out_dtype)

    @_frame_diff_concat_backward_op.register_kernel("cuda")
    def _(grad_out, scale, num_local, frames_dtype):
        n, mc, t, h, w = grad_out.shape
        if grad_out.numel() == 0:
            c = mc // (num_local - 1)
            return torch.zeros((n, t, num_local, c, h, w), dtype=frames_dtype, device=grad_out.device)
        if not _triton_reads(scale):
            return reference.frame_diff_concat_backward_reference(grad_out, scale, num_local, frames_dtype)
        return _triton.frame_diff_concat_backward(grad_out, scale, num_local, frames_dtype)


# ---------------------------------------------------------------------------
# statistics -> scale
# ---------------------------------------------------------------------------
# The values of mean/std must be checked (finite; std > 0), and that check
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


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------

def frame_diff_concat(
    frames: torch.Tensor,
    mean: Stat = None,
    std: Stat = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Differences of consecutive local frames, concatenated along channels (SME-Adapter input, Eq. 2).

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
    check_tensor("frames", frames)
    if frames.dim() != 6:
        raise ValueError(
            f"frame_diff_concat: frames must be Tensor[N, T, M, C, H, W] (6-D), got {frames.dim()}-D "
            f"shape {tuple(frames.shape)}"
        )
    n, t, m, c, h, w = frames.shape
    if m < 2:
        raise ValueError(f"frame_diff_concat: need M >= 2 local frames per segment (dim 2), got M={m}")
    is_uint8 = frames.dtype == torch.uint8
    if not (is_uint8 or frames.dtype in FLOAT_DTYPES):
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
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES:
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
    check_tensor("x", x)
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
