"""Public ops of tdsk.

* :mod:`tdsk.ops.temporal_diff`: the public entry point, ``temporal_pool_diff``,
  ``frame_diff_concat`` and ``local_temporal_diff`` (re-exported from their files below).
* One file per op, each with its public function, its ``torch.ops.tdsk.*``
  registration (schema, fake kernel, autograd) and its device kernels:
  :mod:`tdsk.ops.temporal_pool_diff`, :mod:`tdsk.ops.frame_diff_concat`,
  :mod:`tdsk.ops.local_temporal_diff`. (As
  attributes of :mod:`tdsk.ops` these names are the functions; import from the
  module path, ``from tdsk.ops.temporal_pool_diff import ...``, to reach the files.)
* :mod:`tdsk.ops.reference`: the pure-PyTorch references, forwards and hand-written
  backwards (test oracle, and the ops' default kernels).
* :mod:`tdsk.ops._backends`: what serves each device (:func:`backend_report`).
* :mod:`tdsk.ops.attention`: side-network attention (xformers on CUDA, SDPA otherwise).
"""
from tdsk.ops import attention, reference
from tdsk.ops._backends import backend_report, cpu_kernels, triton_kernels
from tdsk.ops.frame_diff_concat import frame_diff_concat, official_frames_view
from tdsk.ops.local_temporal_diff import local_temporal_diff
from tdsk.ops.temporal_pool_diff import temporal_pool_diff
from tdsk.ops import temporal_diff  # noqa: E402  (after the op files: it re-exports them)

__all__ = [
    "temporal_pool_diff",
    "frame_diff_concat",
    "local_temporal_diff",
    "official_frames_view",
    "backend_report",
    "cpu_kernels",
    "triton_kernels",
    "reference",
    "temporal_diff",
    "attention",
]
