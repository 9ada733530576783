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


def runs_on_cuda(item, has_cuda: bool) -> bool:
    """Whether a collected test exercises CUDA, so that ``pytest -m gpu`` selects it.

    Two kinds besides the explicitly ``gpu``-marked ones: a case parametrised with
    ``device="cuda"`` (the parametrisation exists only where CUDA does), and a test
    marked ``cuda_when_available`` (the Triton kernel tests: compiled kernels on CUDA
    tensors with a GPU, the interpreter on CPU tensors without one). The latter must
    stay unmarked on a CPU machine, where they run interpreted instead of skipping.
    """
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(str(v) == "cuda" or (isinstance(v, torch.device) and v.type == "cuda")
                                    for k, v in callspec.params.items() if "device" in k):
        return True
    return has_cuda and item.get_closest_marker("cuda_when_available") is not None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") is None and runs_on_cuda(item, HAS_CUDA):
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="GPU test: no CUDA device on this machine"))
