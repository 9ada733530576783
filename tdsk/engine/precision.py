"""Numeric precision: one rule for training and inference (docs/inference.md, "Precision").

``auto`` resolves, for training and inference alike:

* on a CUDA GPU: ``bf16`` where the GPU supports it natively, else ``fp16`` (autocast; the
  trainer adds a GradScaler for fp16);
* on a CPU, training: ``fp32`` (bf16 autocast training on a CPU is opt-in);
* on a CPU, inference: ``bf16`` where the CPU has AMX or AVX512-BF16, else ``int8`` (the
  linear layers weight-quantised, :mod:`tdsk.models.quantize`) where PyTorch has a quantized
  CPU engine, else ``fp32``.

``int8`` is an inference-only precision for the CPU. Explicit values are taken as given.
"""
from __future__ import annotations

import contextlib
from typing import Tuple, Union

import torch

from tdsk.schema import PRECISIONS as _RECIPE_SPELLINGS

__all__ = ["PRECISIONS", "normalise_precision", "resolve_precision", "autocast_for", "cpu_bf16_support"]

# accepted spellings -> canonical name (the recipe's train.precision spellings, plus int8)
PRECISIONS = {**_RECIPE_SPELLINGS, "int8": "int8"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Device = Union[str, torch.device]


def normalise_precision(precision, key: str = "precision", inference: bool = False) -> str:
    """The canonical name of ``precision`` (``None`` = ``auto``); a ``ValueError`` naming ``key``
    for an unknown value, or for ``int8`` outside inference."""
    p = PRECISIONS.get(str(precision if precision is not None else "auto").lower())
    allowed = [k for k in ("auto", "fp32", "bf16", "fp16", "int8") if inference or k != "int8"]
    if p is None or p not in allowed:
        extra = " (int8 is for inference only)" if p == "int8" else ""
        raise ValueError(f"{key}={precision!r}: use one of {', '.join(allowed)}{extra}")
    return p


def cpu_bf16_support() -> Tuple[bool, str]:
    """``(fast bf16 on this CPU, what)``: AMX tiles or AVX512-BF16 (torch 2.11-2.15:
    ``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``). Any failure
    to ask means no."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:
        cap = "unknown"
    if cap in ("DEFAULT", "NO AVX", "AVX2", "ZVECTOR", "VSX"):
        # ATen runs below AVX512 (the CPU, or ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA limits it):
        # bf16 would be emulated, slower than fp32
        return False, f"no fast bf16 (CPU capability {cap})"
    cpu = getattr(torch, "cpu", None)
    for attr, what in (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX512-BF16")):
        probe = getattr(cpu, attr, None)
        try:
            if probe is not None and bool(probe()):
                return True, what
        except Exception:
            continue
    return False, f"no AMX or AVX512-BF16 (CPU capability {cap})"


def _cuda_bf16() -> bool:
    try:
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no including_emulation
            return bool(torch.cuda.is_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision, device: Device, inference: bool = False,
                      key: str = "precision") -> Tuple[str, str]:
    """``(fp32 | bf16 | fp16 | int8, reason)`` for ``precision`` (``auto`` or a name) on ``device``.

    ``inference`` selects the inference rule on a CPU (see the module docstring); ``key``
    names the setting in error messages (``train.precision``)."""
    p = normalise_precision(precision, key, inference)
    device = torch.device(device)
    if p == "int8" and device.type != "cpu":
        raise ValueError(f"{key}=int8 runs on the CPU only (device {device})")
    if p != "auto":
        return p, "requested"
    if device.type == "cuda":
        return ("bf16", "auto: the GPU supports bf16") if _cuda_bf16() else \
            ("fp16", "auto: the GPU has no native bf16, fp16 autocast")
    if device.type == "cpu":
        if not inference:
            return "fp32", "auto: training on the CPU runs fp32"
        ok, what = cpu_bf16_support()
        if ok:
            return "bf16", f"auto: the CPU has {what}"
        from tdsk.models.quantize import int8_available, int8_engine

        if int8_available():
            return "int8", f"auto: {what}; int8 linear layers ({int8_engine()} engine)"
        return "fp32", f"auto: {what}"
    return "fp32", f"auto: no autocast rule for {device.type}"


def autocast_for(precision: str, device: Device):
    """The autocast context of a resolved precision (``nullcontext`` for fp32 and int8)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])
