"""Tolerances of the ops against their float64-exact reference, per dtype: ``(atol, rtol)``.

One table for the op tests and ``python -m tdsk.doctor``'s self-test.
"""
import torch

__all__ = ["OP_TOLERANCES"]

OP_TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
