"""``pytest -m gpu`` selects every test that exercises CUDA (the conftest rule), checked
without a GPU by feeding the rule stand-ins for collected items."""
from types import SimpleNamespace

import pytest
import torch

from conftest import runs_on_cuda


def _item(params=None, markers=()):
    callspec = SimpleNamespace(params=params) if params is not None else None
    return SimpleNamespace(callspec=callspec,
                           get_closest_marker=lambda name: object() if name in markers else None)


@pytest.mark.parametrize("value", ["cuda", torch.device("cuda"), torch.device("cuda", 0)], ids=str)
def test_cuda_parametrised_cases_are_gpu_tests(value):
    assert runs_on_cuda(_item({"device": value, "k": 3}), has_cuda=True)
    assert runs_on_cuda(_item({"device": value}), has_cuda=False)  # collected only where CUDA exists anyway


def test_cpu_cases_and_plain_tests_are_not():
    assert not runs_on_cuda(_item({"device": "cpu", "dtype": torch.float32}), has_cuda=True)
    assert not runs_on_cuda(_item(), has_cuda=True)
    assert not runs_on_cuda(_item({"mode": "cuda"}), has_cuda=True)  # only device parameters count


def test_triton_kernel_tests_are_gpu_tests_only_with_a_gpu():
    item = _item(markers=("cuda_when_available",))
    assert runs_on_cuda(item, has_cuda=True)
    assert not runs_on_cuda(item, has_cuda=False)  # on a CPU they run interpreted, never skipped


def test_the_triton_kernel_module_carries_the_marker():
    import test_triton_kernels

    marks = test_triton_kernels.pytestmark
    names = {m.name for m in (marks if isinstance(marks, list) else [marks])}
    assert "cuda_when_available" in names
