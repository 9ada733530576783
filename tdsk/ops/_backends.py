"""Tolerant loading of the optional compiled parts behind the tdsk ops.

* ``tdsk._C`` (C++ CPU kernels, registered as ``torch.ops.tdsk_cpu.*``);
* ``tdsk.kernels`` (Triton kernels for CUDA tensors).

Neither is required: when one is missing (not built, import error, or disabled
with ``TDSK_DISABLE_EXT=1`` / ``TDSK_DISABLE_TRITON=1``) the ops fall back to the
pure-PyTorch reference and say so once.
"""
import importlib
import logging
import os
from functools import lru_cache

from tdsk._logging import log_once

__all__ = ["cpu_kernels", "triton_kernels", "backend_report"]


@lru_cache(maxsize=None)
def cpu_kernels():
    """``torch.ops.tdsk_cpu`` if the C++ extension loaded, else ``None``."""
    if os.environ.get("TDSK_DISABLE_EXT") == "1":
        log_once("ext-disabled", "TDSK_DISABLE_EXT=1: CPU ops use the pure-PyTorch reference")
        return None
    try:
        importlib.import_module("tdsk._C")
        import torch

        ns = torch.ops.tdsk_cpu
        ns.temporal_pool_diff_forward  # noqa: B018  (fails if registration did not happen)
        return ns
    except Exception as exc:  # ImportError, undefined symbol from a torch mismatch, ...
        log_once(
            "ext-missing",
            f"C++ extension tdsk._C unavailable ({type(exc).__name__}: {exc}); "
            "CPU ops fall back to the pure-PyTorch reference. Rebuild with "
            "`pip install --no-build-isolation -e .`",
            logging.WARNING,
        )
        return None


@lru_cache(maxsize=None)
def triton_kernels():
    """The ``tdsk.kernels`` package if Triton imports, else ``None``."""
    if os.environ.get("TDSK_DISABLE_TRITON") == "1":
        log_once("triton-disabled", "TDSK_DISABLE_TRITON=1: CUDA ops use the pure-PyTorch reference")
        return None
    try:
        return importlib.import_module("tdsk.kernels")
    except Exception as exc:
        log_once(
            "triton-missing",
            f"Triton kernels unavailable ({type(exc).__name__}: {exc}); CUDA ops fall back to the "
            "pure-PyTorch reference",
            logging.WARNING,
        )
        return None


def backend_report() -> dict:
    """Which implementation each device uses, e.g. ``{'cpu': 'c++', 'cuda': 'triton'}``."""
    return {
        "cpu": "c++" if cpu_kernels() is not None else "reference",
        "cuda": "triton" if triton_kernels() is not None else "reference",
    }
