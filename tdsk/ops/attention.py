"""Side-network attention: xformers ``memory_efficient_attention`` on CUDA, SDPA otherwise.

One function, :func:`attention`, used by the TDS side blocks (the ViT module of the
TDS Block, Fig. 3(b) of the TDS-CLIP paper) and by the frozen CLIP ViT blocks (Eq. 1;
docs/model.md). Neither backend materialises or saves the ``L x S``
probability matrix for backward (both keep only ``q, k, v``, the output and a
per-row log-sum-exp), which is part of tdsk's training-memory budget.

=========  =====================================================  ==============================
device     implementation                                         when
=========  =====================================================  ==============================
CUDA       ``xformers.ops.memory_efficient_attention``            xformers imports and works
any        ``torch.nn.functional.scaled_dot_product_attention``   otherwise (CPU, no xformers,
                                                                  ``TDSK_DISABLE_XFORMERS=1``,
                                                                  under ``torch.compile``)
=========  =====================================================  ==============================

"Works" is checked twice. An xformers whose compiled extension does not load (a wheel
built for another torch: it imports, warns, and then has no CUDA kernel at all) is
treated as absent. And when xformers has no kernel for a dtype (its flash kernels take
only fp16/bf16; the fp32 one is a separate build), that dtype falls back to SDPA with a
warning, once, instead of failing inside xformers' dispatcher.

The choice is logged once per device type. Importing this module never imports
xformers; it is imported lazily on the first CUDA call.
"""
import logging
import os
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

from tdsk._logging import log_once

__all__ = ["attention", "attention_backend"]


@lru_cache(maxsize=None)
def _xformers_ops():
    if os.environ.get("TDSK_DISABLE_XFORMERS") == "1":
        log_once("xformers-disabled", "TDSK_DISABLE_XFORMERS=1: attention uses scaled_dot_product_attention")
        return None
    try:
        import xformers  # noqa: PLC0415  (optional dependency, imported lazily)
        import xformers.ops as xops  # noqa: PLC0415
    except Exception as exc:  # ImportError, a CUDA-extension/torch mismatch, ...
        log_once(
            "xformers-missing",
            f"xformers unavailable ({type(exc).__name__}: {exc}); CUDA attention uses "
            "scaled_dot_product_attention",
            logging.WARNING,
        )
        return None
    if getattr(xformers, "_has_cpp_library", True) is False:
        # xformers imports, but its compiled extension did not load (built for another
        # torch/CUDA/Python): every memory_efficient_attention call would raise
        log_once(
            "xformers-no-extension",
            f"xformers {getattr(xformers, '__version__', '?')} imports but its C++/CUDA extension does not "
            f"load with torch {torch.__version__}; CUDA attention uses scaled_dot_product_attention",
            logging.WARNING,
        )
        return None
    return xops


def attention_backend(device: torch.device) -> str:
    """``'xformers'`` or ``'sdpa'``: what :func:`attention` uses for tensors on ``device``."""
    device = torch.device(device)
    if device.type == "cuda" and _xformers_ops() is not None:
        return "xformers"
    return "sdpa"


# dtypes for which xformers had no kernel (NotImplementedError from its dispatcher)
_XFORMERS_NO_KERNEL: set = set()


def _sdpa(q, k, v, scale):
    # [B, L, h, d] -> [B, h, L, d] as views: SDPA accepts the strided layout.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Multi-head softmax attention without mask or dropout.

    Args:
        q: ``Tensor[B, L, h, d]`` queries (``L`` query tokens, ``h`` heads of width ``d``).
        k, v: ``Tensor[B, S, h, d]`` keys and values. ``S`` may differ from ``L`` (the
            side blocks attend from the ``N`` patch tokens to ``[cls, patches]``).
        scale: softmax scale, default ``d ** -0.5``.
        backend: force ``'xformers'`` or ``'sdpa'`` (tests); default: see module doc.

    Returns:
        ``Tensor[B, L, h, d]``: ``softmax(q k^T * scale) v`` per head. Any strides
        of the inputs are accepted (e.g. views into a packed ``qkv`` projection).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be Tensor[B, L, heads, head_dim], got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    auto = backend is None
    if auto:
        backend = "sdpa" if torch.compiler.is_compiling() else attention_backend(q.device)
        if backend == "xformers" and q.dtype in _XFORMERS_NO_KERNEL:
            backend = "sdpa"
    if backend == "xformers" and auto:
        log_once("attention-xformers", "side attention: xformers memory_efficient_attention (CUDA)")
        try:
            return _xformers_ops().memory_efficient_attention(q, k, v, scale=scale)
        except NotImplementedError as exc:  # no xformers kernel for these inputs (dtype, head width)
            _XFORMERS_NO_KERNEL.add(q.dtype)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log_once(f"xformers-no-kernel-{q.dtype}",
                     f"xformers has no attention kernel for {q.dtype} here ({first}); "
                     f"{q.dtype} attention uses scaled_dot_product_attention", logging.WARNING)
            backend = "sdpa"
    if backend == "xformers":
        xops = _xformers_ops()
        if xops is None or q.device.type != "cuda":
            raise RuntimeError("attention: backend='xformers' needs xformers and CUDA tensors")
        log_once("attention-xformers", "side attention: xformers memory_efficient_attention (CUDA)")
        return xops.memory_efficient_attention(q, k, v, scale=scale)
    if backend != "sdpa":
        raise ValueError(f"attention: unknown backend {backend!r} (expected 'xformers' or 'sdpa')")
    if not torch.compiler.is_compiling():
        log_once(f"attention-sdpa-{q.device.type}", f"attention on {q.device.type}: scaled_dot_product_attention")
    return _sdpa(q, k, v, scale)
