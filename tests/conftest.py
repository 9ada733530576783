"""Shared pytest setup.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET=1 must be
set before any module that defines ``@triton.jit`` kernels is imported, so it is
set here, at collection time. With a GPU the real kernels run on CUDA tensors.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="GPU test: no CUDA device on this machine"))
