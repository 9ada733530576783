"""Public ops of tdsk.

* :mod:`tdsk.ops.temporal_diff`: ``temporal_pool_diff`` and ``frame_diff_concat``
  (registered as ``torch.ops.tdsk.*`` custom ops).
* :mod:`tdsk.ops.reference`: their pure-PyTorch references (test oracle, fallback).
* :mod:`tdsk.ops.attention`: side-network attention (xformers on CUDA, SDPA otherwise).
"""
from tdsk.ops import attention, reference, temporal_diff
from tdsk.ops._backends import backend_report
from tdsk.ops.temporal_diff import frame_diff_concat, official_frames_view, temporal_pool_diff

__all__ = [
    "temporal_pool_diff",
    "frame_diff_concat",
    "official_frames_view",
    "backend_report",
    "reference",
    "temporal_diff",
    "attention",
]
