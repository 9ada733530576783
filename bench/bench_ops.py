"""Benchmarks of the temporal-difference ops: tdsk vs the reference vs torch.compile(reference).

Run: ``pytest bench/bench_ops.py --benchmark-only`` (CPU rows always; the same rows
run on CUDA with the Triton kernels when a GPU is present).

Providers:
* ``tdsk``      -- the public op (C++ kernel on CPU, Triton on CUDA);
* ``reference`` -- :mod:`tdsk.ops.reference`, eager (the test oracle; it pools with
  ``F.max_pool3d``, the definition of docs/model.md §6);
* ``compiled``  -- ``torch.compile(reference)``;
* ``shifted``   -- an eager pad + ``torch.maximum`` formulation (a fast hand-written
  PyTorch baseline; forward only, its gradient on ties differs from max_pool3d).

Bytes that must move (the floor): forward reads x and writes out (2 * numel * size);
forward+backward adds reading grad and x and writing grad_x (5 * numel * size;
``local_temporal_diff``'s backward does not read x: 4 * numel * size).
``copy`` measures the device's copy bandwidth on the same bytes, so ``pct_of_copy``
= tdsk GB/s / copy GB/s is the fraction of achievable memory bandwidth.
"""
import pytest
import torch
import torch.nn.functional as F

from tdsk.ops import reference
from tdsk.ops.temporal_diff import frame_diff_concat, local_temporal_diff, temporal_pool_diff

from benchlib import CLIP_MEAN, CLIP_STD, FRAME_CASES, LTD_CASES, POOL_CASES  # the shapes the GPU device run also times

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

_compiled = {}


def compiled(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def shifted_pool_diff(x, kernel_size=3, channel_mix=0.0):
    pad = kernel_size // 2
    xp = F.pad(x, (0, 0, 0, 0, pad, pad), value=float("-inf"))
    p = xp[:, :, : x.shape[2]]
    for i in range(1, kernel_size):
        p = torch.maximum(p, xp[:, :, i : i + x.shape[2]])
    d = x - p
    return (1 - channel_mix) * d + channel_mix * d.mean(dim=1, keepdim=True)


def _rounds(numel, device):
    # Large CPU cases take ~0.1-1 s per call with the reference: bound the rounds.
    return 5 if (device == "cpu" and numel > 5_000_000) else None


def _eager_and_compiled(tdsk_op, reference_op):
    """The three providers every op has: the tdsk op, the eager reference, the compiled reference."""
    return {"tdsk": tdsk_op, "reference": reference_op, "compiled": compiled(reference_op)}


def _pool_providers():
    return dict(_eager_and_compiled(temporal_pool_diff, reference.temporal_pool_diff_reference),
                shifted=shifted_pool_diff)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(POOL_CASES))
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled", "shifted", "copy"])
def test_temporal_pool_diff_forward(record, device, case, provider):
    shape, dtype = POOL_CASES[case]
    if dtype == torch.bfloat16 and device == "cpu" and provider != "tdsk" and provider != "copy":
        pytest.skip("bf16 large case: the CPU reference is too slow to be worth timing; GPU row")
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype)
    nbytes = 2 * x.numel() * x.element_size()
    if provider == "copy":
        out = torch.empty_like(x)
        fn = lambda: out.copy_(x)  # noqa: E731
    else:
        op = _pool_providers()[provider]
        fn = lambda: op(x, 3, 0.5)  # noqa: E731
    record(fn, op="temporal_pool_diff", case=case, mode="forward", provider=provider, bytes_moved=nbytes,
           device=device, rounds=_rounds(x.numel(), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["train_b16", "large"])
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled"])
def test_temporal_pool_diff_forward_backward(record, device, case, provider):
    shape, dtype = POOL_CASES[case]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
    grad = torch.randn_like(x)
    op = _pool_providers()[provider]

    def fwd_bwd():
        x.grad = None
        op(x, 3, 0.5).backward(grad)

    record(fwd_bwd, op="temporal_pool_diff", case=case, mode="forward+backward", provider=provider,
           bytes_moved=5 * x.numel() * x.element_size(), device=device, rounds=_rounds(x.numel(), device))


def _frame_providers():
    return _eager_and_compiled(frame_diff_concat, reference.frame_diff_concat_reference)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(FRAME_CASES))
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled"])
def test_frame_diff_concat_forward(record, device, case, provider):
    shape, dtype = FRAME_CASES[case]
    torch.manual_seed(0)
    if dtype == torch.uint8:
        frames = torch.randint(0, 256, shape, dtype=dtype, device=device)
        mean, std = torch.tensor(CLIP_MEAN, device=device), torch.tensor(CLIP_STD, device=device)
    else:
        frames = torch.randn(shape, dtype=dtype, device=device)
        mean = std = None
    n, t, m, c, h, w = shape
    nbytes = frames.numel() * frames.element_size() + n * (m - 1) * c * t * h * w * 4
    op = _frame_providers()[provider]
    record(lambda: op(frames, mean, std), op="frame_diff_concat", case=case, mode="forward", provider=provider,
           bytes_moved=nbytes, device=device, rounds=_rounds(frames.numel(), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled"])
def test_frame_diff_concat_forward_backward(record, device, provider):
    shape, dtype = FRAME_CASES["sme_4clips_f32"]
    torch.manual_seed(0)
    frames = torch.randn(shape, dtype=dtype, device=device).requires_grad_(True)
    n, t, m, c, h, w = shape
    grad = torch.randn(n, (m - 1) * c, t, h, w, device=device)
    op = _frame_providers()[provider]

    def fwd_bwd():
        frames.grad = None
        op(frames).backward(grad)

    out_bytes = grad.numel() * 4
    nbytes = 2 * frames.numel() * 4 + 2 * out_bytes  # fwd: read f, write out; bwd: read grad, write grad_f
    record(fwd_bwd, op="frame_diff_concat", case="sme_4clips_f32", mode="forward+backward", provider=provider,
           bytes_moved=nbytes, device=device, rounds=_rounds(frames.numel(), device))


def _ltd_providers():
    return _eager_and_compiled(local_temporal_diff, reference.local_temporal_diff_reference)


def _m2clip_tokens(shape, dtype, device, requires_grad=False):
    """``[B*T, 1+N, C]`` tokens and M2-CLIP's view of their patch tokens as ``[B, T, N, C]``."""
    b, t, n, c = shape
    tokens = torch.randn(b * t, 1 + n, c, dtype=dtype, device=device).requires_grad_(requires_grad)
    return tokens, tokens[:, 1:, :].view(b, t, n, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LTD_CASES))
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled", "copy"])
def test_local_temporal_diff_forward(record, device, case, provider):
    shape, dtype = LTD_CASES[case]
    torch.manual_seed(0)
    _, x = _m2clip_tokens(shape, dtype, device)
    nbytes = 2 * x.numel() * x.element_size()
    if provider == "copy":
        out = torch.empty(x.shape, dtype=dtype, device=device)
        fn = lambda: out.copy_(x)  # noqa: E731
    else:
        op = _ltd_providers()[provider]
        fn = lambda: op(x)  # noqa: E731
    record(fn, op="local_temporal_diff", case=case, mode="forward", provider=provider, bytes_moved=nbytes,
           device=device, rounds=_rounds(x.numel(), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LTD_CASES))
@pytest.mark.parametrize("provider", ["tdsk", "reference", "compiled"])
def test_local_temporal_diff_forward_backward(record, device, case, provider):
    shape, dtype = LTD_CASES[case]
    torch.manual_seed(0)
    tokens, _ = _m2clip_tokens(shape, dtype, device, requires_grad=True)
    grad = torch.randn(shape, dtype=dtype, device=device)
    op = _ltd_providers()[provider]
    b, t, n, c = shape

    def fwd_bwd():
        tokens.grad = None
        op(tokens[:, 1:, :].view(b, t, n, c)).backward(grad)

    record(fwd_bwd, op="local_temporal_diff", case=case, mode="forward+backward", provider=provider,
           bytes_moved=4 * grad.numel() * grad.element_size(), device=device, rounds=_rounds(grad.numel(), device))
