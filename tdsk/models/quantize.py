"""Int8 weight quantisation for CPU inference (docs/inference.md, "Precision").

On a CPU without fast bf16 (AVX2 only) fp32 is the only float path, and the linear layers
(the frozen CLIP tower's q/k/v, output and MLP projections and the side network's) hold
most of the FLOPs. :func:`quantize_int8` returns a copy of an eval model whose linear
layers run int8 x int8 matrix products with dynamically quantised activations (per-tensor
activation scale computed per call, per-tensor int8 weights) through PyTorch's own
``torch.ao.quantization.quantize_dynamic`` and its x86 (fbgemm) kernels: nothing is
hand-written here. Everything else (convolutions, attention products, norms) stays fp32.

The drift against fp32 is measured on the demo and in ``bench/bench_inference.py`` and
stated in docs/inference.md; it is an inference-only path (no gradients).
"""
from __future__ import annotations

import copy
import logging
import warnings

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["quantize_int8", "int8_available", "int8_engine"]


def int8_engine() -> str:
    """The quantized CPU engine int8 inference uses (``x86`` where PyTorch has it)."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    return ""


def int8_available() -> bool:
    """Whether this PyTorch build has a CPU int8 engine for dynamically quantised linears."""
    return bool(int8_engine()) and hasattr(torch, "ao") and hasattr(torch.ao, "quantization")


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode, CPU) whose ``nn.Linear`` layers run int8.

    ``nn.MultiheadAttention`` keeps its fused q/k/v projection as a bare parameter; the copy
    gets it as an ``in_proj`` linear module (the frozen tower's forward uses it when present,
    :func:`tdsk.models.clip_encoder.frozen_block_forward`) so it is quantised too. The input
    model is left untouched.
    """
    if not int8_available():
        raise RuntimeError("int8 inference needs a PyTorch build with a quantized CPU engine "
                           f"(supported engines: {torch.backends.quantized.supported_engines})")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 inference runs on the CPU; move the model to the CPU first")
    torch.backends.quantized.engine = int8_engine()
    q = copy.deepcopy(model).eval()
    for module in q.modules():
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim \
                and module.in_proj_weight is not None:
            lin = nn.Linear(module.embed_dim, 3 * module.embed_dim, bias=module.in_proj_bias is not None)
            lin.weight = module.in_proj_weight
            if module.in_proj_bias is not None:
                lin.bias = module.in_proj_bias
            module.in_proj = lin
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager dynamic path used
        # here is the one with fast x86 kernels today (torchao's int8 path needs torch.compile)
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(
            q, {nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear}, dtype=torch.qint8)
    count = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules())
    logger.info(f"int8: {count} linear layers quantised (dynamic activations, {torch.backends.quantized.engine})")
    return q
