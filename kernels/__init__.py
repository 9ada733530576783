"""Triton kernels of tdsk (installed as ``tdsk.kernels``), used for CUDA tensors.

These six launchers are the CUDA kernels of the ``torch.ops.tdsk.*`` ops, registered
with ``register_kernel("cuda")`` in :mod:`tdsk.ops.temporal_pool_diff`,
:mod:`tdsk.ops.frame_diff_concat` and :mod:`tdsk.ops.local_temporal_diff` (arguments
already validated, ``numel > 0``):

* :func:`temporal_pool_diff_forward` ``(x, kernel_size, channel_mix) -> out``
* :func:`temporal_pool_diff_backward` ``(grad_out, x, kernel_size, channel_mix) -> grad_x``
* :func:`frame_diff_concat_forward` ``(frames, scale, out_dtype) -> out``
* :func:`frame_diff_concat_backward` ``(grad_out, scale, num_local, frames_dtype) -> grad_frames``
* :func:`local_temporal_diff_forward` ``(x) -> out``
* :func:`local_temporal_diff_backward` ``(grad_out) -> grad_x``

They also run on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests exercise
them without a GPU; set the variable before this package is imported).

Importing this package imports Triton; without it the ImportError propagates on
purpose: :func:`tdsk.ops._backends.triton_kernels` catches it and the CUDA ops fall
back to the pure-PyTorch reference.
"""
import triton  # noqa: F401  (deliberately unguarded, see above)

from .frame_diff_concat import frame_diff_concat_backward, frame_diff_concat_forward
from .local_temporal_diff import local_temporal_diff_backward, local_temporal_diff_forward
from .temporal_pool_diff import temporal_pool_diff_backward, temporal_pool_diff_forward

__all__ = [
    "temporal_pool_diff_forward",
    "temporal_pool_diff_backward",
    "frame_diff_concat_forward",
    "frame_diff_concat_backward",
    "local_temporal_diff_forward",
    "local_temporal_diff_backward",
]
