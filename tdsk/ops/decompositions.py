"""Decompositions of the ``torch.ops.tdsk.*`` custom ops into standard ATen operators.

An exported graph (``torch.export``) keeps every custom op as one opaque call:
``torch.ops.tdsk.frame_diff_concat``, ``torch.ops.tdsk.temporal_pool_diff`` (and
``torch.ops.tdsk.local_temporal_diff`` in models that use it). Such a
graph needs tdsk (its op library) to load and run, and ONNX has no translation for the
calls. :func:`decompose` rewrites them, in an ``ExportedProgram``, into the pure-PyTorch
references of :mod:`tdsk.ops.reference` traced down to ATen (``max_pool3d``, ``sub``,
``mean``, ``mul``, ``permute``, ...), so that the program loads with plain torch
(``torch.export.load``) and translates to ONNX with the standard opset.

The decompositions are the ops' default kernels (the references), so the numbers are
the same as the reference kernels' (the C++ / Triton kernels agree with them to the
op tests' tolerances, :data:`tdsk.ops.tolerances.OP_TOLERANCES`).

What a decomposition does not do: argument *value* checks. ``frame_diff_scale`` checks
that mean/std are finite and std > 0 when it runs; its decomposition only computes
``1 / (std * divisor)`` (a check on tensor values cannot be part of a portable graph).
The models call ``frame_diff_concat`` without statistics, so their graphs have no
``frame_diff_scale`` at all.

Nothing is registered globally: :func:`decomposition_table` is passed explicitly to
``ExportedProgram.run_decompositions`` (which is what :func:`decompose` does), so eager,
``torch.compile`` and training keep the fused kernels.
"""
from typing import Callable, Dict, Optional

import torch

from tdsk.ops import reference

# The op definitions must exist before torch.ops.tdsk.<name> can be looked up.
from tdsk.ops import frame_diff_concat as _fdc_module  # noqa: F401
from tdsk.ops import local_temporal_diff as _ltd_module  # noqa: F401
from tdsk.ops import temporal_pool_diff as _tpd_module  # noqa: F401

__all__ = ["decomposition_table", "decompose", "has_tdsk_ops"]


def _temporal_pool_diff(x: torch.Tensor, kernel_size: int, channel_mix: float) -> torch.Tensor:
    return reference.temporal_pool_diff_reference(x, kernel_size, channel_mix)


def _temporal_pool_diff_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int,
                                 channel_mix: float) -> torch.Tensor:
    return reference.temporal_pool_diff_backward_reference(grad_out, x, kernel_size, channel_mix)


def _frame_diff_concat(frames: torch.Tensor, scale: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    return reference.frame_diff_concat_scaled_reference(frames, scale, out_dtype)


def _frame_diff_concat_backward(grad_out: torch.Tensor, scale: Optional[torch.Tensor], num_local: int,
                                frames_dtype: torch.dtype) -> torch.Tensor:
    return reference.frame_diff_concat_backward_reference(grad_out, scale, num_local, frames_dtype)


def _frame_diff_scale(mean: torch.Tensor, std: torch.Tensor, divisor: float, dtype: torch.dtype) -> torch.Tensor:
    # The op's arithmetic (float64 division, rounded once), without its value checks.
    return (1.0 / (std.to(torch.float64) * divisor)).to(dtype)


def _local_temporal_diff(x: torch.Tensor) -> torch.Tensor:
    return reference.local_temporal_diff_reference(x)


def _local_temporal_diff_backward(grad_out: torch.Tensor) -> torch.Tensor:
    return reference.local_temporal_diff_backward_reference(grad_out)


def decomposition_table() -> Dict[torch._ops.OpOverload, Callable]:
    """``{torch.ops.tdsk.<op>.default: pure-ATen function}`` for every tdsk custom op.

    For ``ExportedProgram.run_decompositions(table)``; merge it into
    ``torch.export.default_decompositions()`` to also lower everything else to core ATen.
    """
    ops = torch.ops.tdsk
    return {
        ops.temporal_pool_diff.default: _temporal_pool_diff,
        ops.temporal_pool_diff_backward.default: _temporal_pool_diff_backward,
        ops.frame_diff_concat.default: _frame_diff_concat,
        ops.frame_diff_concat_backward.default: _frame_diff_concat_backward,
        ops.frame_diff_scale.default: _frame_diff_scale,
        ops.local_temporal_diff.default: _local_temporal_diff,
        ops.local_temporal_diff_backward.default: _local_temporal_diff_backward,
    }


def has_tdsk_ops(program: "torch.export.ExportedProgram") -> bool:
    """Whether any node of ``program``'s graph (or its submodules) still calls a ``tdsk::`` op."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
                    and node.target.namespace == "tdsk":
                return True
    return False


def decompose(program: "torch.export.ExportedProgram", core_aten: bool = False) -> "torch.export.ExportedProgram":
    """``program`` with every ``torch.ops.tdsk.*`` call replaced by standard ATen operators.

    ``core_aten=True`` also lowers the rest of the graph to the core ATen opset
    (``torch.export.default_decompositions()``); by default only the tdsk ops change.
    Raises ``RuntimeError`` if a tdsk op survives (an op added without a decomposition).
    """
    table = dict(torch.export.default_decompositions()) if core_aten else {}
    table.update(decomposition_table())
    out = program.run_decompositions(table)
    if has_tdsk_ops(out):
        raise RuntimeError("tdsk.ops.decompositions: a torch.ops.tdsk op has no decomposition; add it to "
                           "decomposition_table()")
    return out
