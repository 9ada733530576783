"""Device routing of the tdsk ops, and tolerant loading of the compiled parts behind it.

Every op exists once, as the ``torch.library`` custom op ``torch.ops.tdsk.<name>``,
defined in Python (:mod:`tdsk.ops.temporal_pool_diff`, :mod:`tdsk.ops.frame_diff_concat`,
:mod:`tdsk.ops.local_temporal_diff`) with its schema, fake kernel and autograd. The *dispatcher* picks the kernel by device:

==========================  ===========================================  ===============================
dispatch key                kernel                                       registered by
==========================  ===========================================  ===============================
CPU                         C++, ``at::parallel_for`` (``tdsk._C``)       :func:`register_cpu_kernels`
CUDA                        Triton launchers (``tdsk.kernels``)          ``op.register_kernel("cuda")``
                                                                         in the op's file
CompositeExplicitAutograd   :mod:`tdsk.ops.reference` (the op's default  ``torch.library.custom_op``
(every other device)        kernel)
==========================  ===========================================  ===============================

A device whose kernel is missing -- C++ not built, not loadable or disabled with
``TDSK_DISABLE_EXT=1``; Triton not importable or disabled with ``TDSK_DISABLE_TRITON=1``;
any device other than CPU/CUDA -- runs the default, the reference. Nothing here raises:
each missing part is logged once, when ``tdsk.ops`` is imported, and
:func:`backend_report` reads from the dispatcher what serves each device.

Why the schema is defined in Python and the C++ kernel is added to it (rather than a
``TORCH_LIBRARY(tdsk, m)`` schema in C++ with Python fallback definitions): the ops,
their fake kernels and autograd must exist without the ``.so``, and a schema written
twice can drift; the dispatcher checks each C++ signature against the one Python
schema when :func:`register_cpu_kernels` runs (see ``csrc/register.cpp``).

Why the CUDA kernels are ``register_kernel("cuda")`` launchers and not
``torch.library.triton_op`` + ``wrap_triton``: a ``triton_op`` *is* the op definition,
and under ``torch.compile`` it is decomposed into its Python body for every device, so
the CPU would trace that body instead of calling its C++ kernel (and ``wrap_triton``
kernels fail under ``torch.compile`` in the CPU interpreter); a CUDA-only ``triton_op``
would need a second schema per function. With a launcher, Inductor treats the op as
one opaque call on CUDA too; the Triton kernels are not fused into Inductor's graph.
"""
import importlib
import logging
import os
from functools import lru_cache
from types import SimpleNamespace

import torch

from tdsk._logging import log_once

__all__ = ["extension", "register_cpu_kernels", "triton_kernels", "cpu_kernels", "backend_report", "KERNEL_OPS"]

# The ops that have per-device kernels (filled by the op files, in definition order);
# backend_report() looks them up in the dispatcher.
KERNEL_OPS: list = []

# Op name -> the name of its launcher in tdsk.kernels (and in cpu_kernels()).
_LAUNCHERS = {
    "temporal_pool_diff": "temporal_pool_diff_forward",
    "temporal_pool_diff_backward": "temporal_pool_diff_backward",
    "frame_diff_concat": "frame_diff_concat_forward",
    "frame_diff_concat_backward": "frame_diff_concat_backward",
    "local_temporal_diff": "local_temporal_diff_forward",
    "local_temporal_diff_backward": "local_temporal_diff_backward",
}

_REBUILD = "Rebuild with `pip install --no-build-isolation -e .`"


@lru_cache(maxsize=None)
def extension():
    """The ``tdsk._C`` module (C++ CPU kernels), or ``None`` when disabled or not loadable."""
    if os.environ.get("TDSK_DISABLE_EXT") == "1":
        log_once("ext-disabled", "TDSK_DISABLE_EXT=1: CPU ops use the pure-PyTorch reference")
        return None
    try:
        return importlib.import_module("tdsk._C")
    except Exception as exc:  # ImportError, undefined symbol from a torch mismatch, ...
        log_once(
            "ext-missing",
            f"C++ extension tdsk._C unavailable ({type(exc).__name__}: {exc}); "
            f"CPU ops fall back to the pure-PyTorch reference. {_REBUILD}",
            logging.WARNING,
        )
        return None


def register_cpu_kernels(*names: str) -> bool:
    """Make the C++ kernels of ``tdsk::<name>`` the ops' CPU kernels (the ops must be defined).

    Returns whether they were registered; if not (no extension, or a build whose
    kernels do not match the schemas), the reference keeps serving the CPU.
    """
    KERNEL_OPS.extend(n for n in names if n not in KERNEL_OPS)
    ext = extension()
    if ext is None:
        return False
    try:
        for name in names:
            ext.register_cpu_kernel(name)
    except Exception as exc:  # a stale build: no register_cpu_kernel, a signature mismatch, ...
        log_once(
            "ext-stale",
            f"tdsk._C could not register its CPU kernels ({type(exc).__name__}: {exc}); "
            f"CPU ops fall back to the pure-PyTorch reference. {_REBUILD}",
            logging.WARNING,
        )
        return False
    return True


@lru_cache(maxsize=None)
def triton_kernels():
    """The ``tdsk.kernels`` package (Triton launchers) if Triton imports, else ``None``."""
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


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsk::{name}", key)


def backend_report() -> dict:
    """What the dispatcher runs for each device type, e.g. ``{'cpu': 'c++', 'cuda': 'triton'}``.

    ``'reference'`` where the default kernel serves (some compiled kernel missing).
    """
    ops = list(KERNEL_OPS)
    return {
        "cpu": "c++" if ops and all(_has_kernel(n, "CPU") for n in ops) else "reference",
        "cuda": "triton" if ops and all(_has_kernel(n, "CUDA") for n in ops) else "reference",
    }


@lru_cache(maxsize=None)
def _direct_cpu_kernels() -> SimpleNamespace:
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

    def direct(name):
        overload = getattr(torch.ops.tdsk, name).default

        def call(*args):
            return overload.redispatch(keyset, *args)

        call.__name__ = _LAUNCHERS[name]
        call.__doc__ = f"The CPU kernel of torch.ops.tdsk.{name} (C++), called directly."
        return call

    return SimpleNamespace(**{_LAUNCHERS[n]: direct(n) for n in KERNEL_OPS})


def cpu_kernels():
    """The C++ kernels as plain functions, or ``None`` when they do not serve the CPU.

    The functions have the names and arguments of the Triton launchers in
    ``tdsk.kernels`` (``temporal_pool_diff_forward(x, kernel_size, channel_mix)``, ...).
    Each call goes straight to the op's CPU kernel (a redispatch on the CPU key: no
    autograd, no argument checks but the kernel's own). For tests and benchmarks.
    """
    if backend_report()["cpu"] != "c++":
        return None
    return _direct_cpu_kernels()
