"""Temporal-difference ops of TDS-CLIP: the public entry point (re-exports).

* :func:`temporal_pool_diff` -- the TD-Adapter core, temporal max-pool minus input
  with an optional channel-mean mix (Eq. 4 of the paper; :mod:`tdsk.ops.temporal_pool_diff`).
* :func:`frame_diff_concat` -- the SME-Adapter input, differences of M consecutive
  local frames concatenated along channels, with optional on-the-fly uint8
  normalisation (Eq. 2 of the paper; :mod:`tdsk.ops.frame_diff_concat`).
* :func:`local_temporal_diff` -- M2-CLIP's local temporal difference (the input of the
  difference branch of its TED-Adapter), ``out[:, t] = x[:, t] - x[:, t-1]``, zero for
  the first frame (:mod:`tdsk.ops.local_temporal_diff`; docs/ops.md).
* :func:`official_frames_view` -- the official loader's ``(N*T, M*C, H, W)`` tensor
  seen as ``(N, T, M, C, H, W)``.

Each op exists once, as ``torch.ops.tdsk.<name>`` (plus a ``*_backward`` op), with a
fake implementation and autograd, so ``torch.compile(fullgraph=True)`` traces through
it. The dispatcher routes by device (see :mod:`tdsk.ops._backends`):

=========  ===========================================  ===========================
device     kernel                                       when it is missing
=========  ===========================================  ===========================
CPU        C++ ``at::parallel_for`` kernels (tdsk._C)   :mod:`tdsk.ops.reference`
CUDA       Triton kernels (``tdsk.kernels``)            :mod:`tdsk.ops.reference`
other      :mod:`tdsk.ops.reference`
=========  ===========================================  ===========================
"""
from tdsk.ops.frame_diff_concat import frame_diff_concat, official_frames_view
from tdsk.ops.local_temporal_diff import local_temporal_diff
from tdsk.ops.temporal_pool_diff import temporal_pool_diff

__all__ = ["temporal_pool_diff", "frame_diff_concat", "local_temporal_diff", "official_frames_view"]
