"""Public ops (``torch.ops.tdsk.*`` through ``tdsk.ops.temporal_diff``) against the reference.

Whatever backend serves the device (C++ on CPU, Triton on CUDA, or the reference
fallback) must agree with :mod:`tdsk.ops.reference`: forward values and gradients
(the reference's gradients come from autograd, never from hand-written formulas).
"""
import os
import subprocess
import sys

import pytest
import torch

from tdsk.ops.tolerances import OP_TOLERANCES
import torch.nn.functional as F

from tdsk.ops import reference
from tdsk.ops.temporal_diff import frame_diff_concat, local_temporal_diff, official_frames_view, temporal_pool_diff

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Per-dtype tolerances (atol, rtol). float32 with channel_mix=0 is asserted exactly
# in its own test; with a channel mean the summation order may differ.
TOL = OP_TOLERANCES  # one table with tdsk.doctor's self-test
DTYPES = list(TOL)

# (N, C, T, H, W): T = 1, 2, 3, 16; odd/prime H and W; N = 0; channels 1..64.
POOL_SHAPES = [
    (2, 3, 1, 5, 7),
    (1, 1, 2, 3, 3),
    (2, 5, 3, 7, 11),
    (1, 4, 16, 3, 5),
    (0, 4, 8, 3, 3),
    (2, 20, 8, 7, 7),
    (1, 64, 4, 2, 3),
    (3, 2, 5, 1, 1),
]
from tdsk.schema import CLIP_MEAN, CLIP_STD  # noqa: E402  (the one home of the statistics)


def assert_close(actual, expected, dtype, what=""):
    atol, rtol = TOL[dtype]
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    err = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    bad = err > bound
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; max err {err.max().item():.3g}; "
            f"first bad indices {idx}"
        )


def with_ties(x):
    """Quantise so that many windows hold several equal maxima (tests the tie rule)."""
    return (x * 2).round() / 2


def pool_ref_grads(x, k, mix, grad):
    xr = x.detach().clone().requires_grad_(True)
    y = reference.temporal_pool_diff_reference(xr, k, mix)
    y.backward(grad)
    return y.detach(), xr.grad


# ---------------------------------------------------------------------------
# reference sanity (the oracle itself)
# ---------------------------------------------------------------------------

def test_reference_pool_matches_definition():
    x = torch.randn(2, 3, 6, 4, 5, dtype=torch.float64)
    k = 3
    manual = torch.empty_like(x)
    for t in range(6):
        lo, hi = max(0, t - 1), min(6, t + 2)
        manual[:, :, t] = x[:, :, t] - x[:, :, lo:hi].amax(dim=2)
    d = manual
    torch.testing.assert_close(reference.temporal_pool_diff_reference(x, k, 0.0), d)
    mixed = 0.7 * d + 0.3 * d.mean(dim=1, keepdim=True)
    torch.testing.assert_close(reference.temporal_pool_diff_reference(x, k, 0.3), mixed)


def test_reference_frame_diff_matches_definition():
    frames = torch.randint(0, 256, (2, 3, 4, 3, 5, 6), dtype=torch.uint8)
    out = reference.frame_diff_concat_reference(frames, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    f = frames.double() / 255
    f = (f - torch.tensor(CLIP_MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        CLIP_STD, dtype=torch.float64
    ).view(3, 1, 1)
    for j in range(3):
        for c in range(3):
            expected = f[:, :, j + 1, c] - f[:, :, j, c]  # [N, T, H, W]
            torch.testing.assert_close(out[:, j * 3 + c].double(), expected, atol=1e-5, rtol=1e-5)
    assert out.dtype == torch.float32 and out.shape == (2, 9, 3, 5, 6)


# ---------------------------------------------------------------------------
# temporal_pool_diff
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_pool_diff_exact_float32(device, shape, k):
    torch.manual_seed(0)
    x = with_ties(torch.randn(shape, device=device))
    out = temporal_pool_diff(x, k, 0.0)
    expected = reference.temporal_pool_diff_reference(x, k, 0.0)
    assert out.is_contiguous() and out.dtype == x.dtype
    assert torch.equal(out, expected), "float32 with channel_mix=0 must match the reference exactly"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k,mix", [(3, 0.5), (5, 0.25), (7, 1.0), (1, 0.5)])
def test_pool_diff_forward_backward(device, dtype, shape, k, mix):
    torch.manual_seed(1)
    x = with_ties(torch.randn(shape, device=device)).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    xr = x.clone().requires_grad_(True)
    out = temporal_pool_diff(xr, k, mix)
    out.backward(grad)
    ref_out, ref_grad = pool_ref_grads(x, k, mix, grad)
    assert_close(out, ref_out, dtype, f"forward {dtype} k={k} mix={mix}")
    assert xr.grad.dtype == dtype
    assert_close(xr.grad, ref_grad, dtype, f"grad {dtype} k={k} mix={mix}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["permuted", "sliced", "channels_last_3d", "expanded"])
def test_pool_diff_non_contiguous(device, layout):
    torch.manual_seed(2)
    base = with_ties(torch.randn(2, 8, 5, 7, 6, device=device))
    if layout == "permuted":  # the TD-Adapter's (B, T, R, g, g) -> (B, R, T, g, g) view
        x = base.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    elif layout == "sliced":
        x = base[:, ::2, :, 1:, ::2]
    elif layout == "channels_last_3d":
        x = base.contiguous(memory_format=torch.channels_last_3d)
    else:
        x = base[:, :1].expand(2, 8, 5, 7, 6)
    assert not x.is_contiguous() or layout == "channels_last_3d"
    grad = torch.randn(x.shape, device=device)
    xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = temporal_pool_diff(xr, 3, 0.5)
    out.backward(grad.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3))  # non-contiguous grad too
    ref_out, ref_grad = pool_ref_grads(x.contiguous(), 3, 0.5, grad)
    assert out.is_contiguous()
    assert_close(out, ref_out, torch.float32, layout)
    assert_close(xr.grad, ref_grad, torch.float32, layout + " grad")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k,mix", [(3, 0.5), (5, 0.0), (1, 1.0)])
def test_pool_diff_gradcheck(seed, k, mix):
    torch.manual_seed(seed)
    # Distinct values keep the max away from ties, where max is not differentiable.
    x = torch.randperm(2 * 3 * 5 * 2 * 3, dtype=torch.float64).view(2, 3, 5, 2, 3).div_(7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: temporal_pool_diff(t, k, mix), (x,), eps=1e-6, atol=1e-7)


def test_pool_diff_ties_go_to_earliest_frame():
    x = torch.zeros(1, 1, 4, 1, 1, requires_grad=True)  # every window is a tie
    temporal_pool_diff(x, 3, 0.0).sum().backward()
    # windows: t0 {0,1}->0, t1 {0,1,2}->0, t2 {1,2,3}->1, t3 {2,3}->2; grad = 1 - (#windows won)
    assert x.grad.flatten().tolist() == [1 - 2, 1 - 1, 1 - 1, 1 - 0]


def test_pool_diff_empty_and_grad():
    x = torch.randn(0, 3, 4, 2, 2, requires_grad=True)
    out = temporal_pool_diff(x, 3, 0.5)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: temporal_pool_diff(torch.randn(2, 3, 4, 5)), ValueError, "5-D"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 0, 3, 3)), ValueError, "T >= 1"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), kernel_size=2), ValueError, "odd"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), kernel_size=0), ValueError, "kernel_size"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), kernel_size=-3), ValueError, "kernel_size"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), kernel_size=3.0), TypeError, "kernel_size"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), channel_mix=1.5), ValueError, "channel_mix"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), channel_mix=-0.1), ValueError, "channel_mix"),
        (lambda: temporal_pool_diff(torch.randn(1, 2, 3, 3, 3), channel_mix=float("nan")), ValueError, "channel_mix"),
        (lambda: temporal_pool_diff(torch.ones(1, 2, 3, 3, 3, dtype=torch.int32)), TypeError, "float32"),
        (lambda: temporal_pool_diff([1.0, 2.0]), TypeError, "torch.Tensor"),
    ],
)
def test_pool_diff_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# frame_diff_concat
# ---------------------------------------------------------------------------

FRAME_SHAPES = [(2, 3, 5, 3, 7, 5), (1, 1, 2, 1, 3, 3), (1, 8, 3, 2, 5, 11), (0, 2, 5, 3, 4, 4), (2, 16, 4, 3, 2, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", FRAME_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("normalise", [False, True])
def test_frame_diff_forward_backward(device, dtype, shape, normalise):
    torch.manual_seed(3)
    c = shape[3]
    frames = torch.rand(shape, device=device).to(dtype)
    mean = std = None
    if normalise:
        mean = torch.linspace(0.3, 0.6, c, device=device)
        std = torch.linspace(0.2, 0.3, c, device=device)
    grad = torch.randn((shape[0], (shape[2] - 1) * c, shape[1], shape[4], shape[5]), device=device).to(dtype)
    fr = frames.clone().requires_grad_(True)
    out = frame_diff_concat(fr, mean, std)
    out.backward(grad)
    fref = frames.clone().requires_grad_(True)
    expected = reference.frame_diff_concat_reference(fref, mean, std)
    expected.backward(grad)
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, expected.detach(), dtype, "frame_diff forward")
    assert_close(fr.grad, fref.grad, dtype, "frame_diff grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_frame_diff_uint8_normalises_on_the_fly(device, out_dtype):
    torch.manual_seed(4)
    frames = torch.randint(0, 256, (2, 4, 5, 3, 9, 7), dtype=torch.uint8, device=device)
    out = frame_diff_concat(frames, CLIP_MEAN, CLIP_STD, out_dtype=out_dtype)
    expected = reference.frame_diff_concat_reference(
        frames, torch.tensor(CLIP_MEAN, device=device), torch.tensor(CLIP_STD, device=device), out_dtype
    )
    dtype = out_dtype or torch.float32
    assert out.dtype == dtype and out.shape == (2, 12, 4, 9, 7)
    tol_dtype = dtype if dtype != torch.float64 else torch.float32  # scale is rounded to float32
    assert_close(out, expected, tol_dtype, "uint8 normalise")


@pytest.mark.parametrize("device", DEVICES)
def test_frame_diff_non_contiguous_and_official_view(device):
    torch.manual_seed(5)
    n, t, m, c, h, w = 2, 3, 5, 3, 6, 4
    official = torch.randn(n * t, m * c, h, w, device=device)  # the official loader's tensor
    frames = official_frames_view(official, num_segments=t)
    assert frames.data_ptr() == official.data_ptr() and frames.shape == (n, t, m, c, h, w)
    out = frame_diff_concat(frames)
    # the official model: (b t) (m c) h w -> differences -> b c t h w
    f = official.view(n * t, m, c, h, w)
    diff = torch.cat([f[:, j + 1] - f[:, j] for j in range(m - 1)], dim=1)
    expected = diff.view(n, t, (m - 1) * c, h, w).permute(0, 2, 1, 3, 4)
    assert torch.equal(out, expected)
    sliced = torch.randn(n, t, m, c, h, 2 * w, device=device)[..., ::2].transpose(1, 2).contiguous().transpose(1, 2)
    assert not sliced.is_contiguous()
    torch.testing.assert_close(frame_diff_concat(sliced), reference.frame_diff_concat_reference(sliced))


@pytest.mark.parametrize("seed", [0, 1])
def test_frame_diff_gradcheck(seed):
    torch.manual_seed(seed)
    f = torch.randn(2, 2, 3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: frame_diff_concat(t), (f,))
    assert torch.autograd.gradcheck(lambda t: frame_diff_concat(t, [0.4, 0.5], [0.2, 0.3]), (f,))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: frame_diff_concat(torch.randn(2, 3, 5, 3, 4)), ValueError, "6-D"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 1, 3, 4, 4)), ValueError, "M >= 2"),
        (lambda: frame_diff_concat(torch.zeros(1, 2, 3, 3, 4, 4, dtype=torch.uint8)), TypeError, "mean= and std="),
        (lambda: frame_diff_concat(torch.zeros(1, 2, 3, 3, 4, 4, dtype=torch.int64)), TypeError, "uint8"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), mean=CLIP_MEAN), ValueError, "both mean and std"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), CLIP_MEAN[:2], CLIP_STD), ValueError, "mean"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), CLIP_MEAN, (1, 2, 3, 4)), ValueError, "std"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), CLIP_MEAN, (0.2, 0.0, 0.3)), ValueError, "std must be > 0"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), out_dtype=torch.int32), TypeError, "out_dtype"),
        (lambda: frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), "abc", CLIP_STD), (TypeError, ValueError), "mean"),
    ],
)
def test_frame_diff_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed-device check needs a second device (CUDA)")
@pytest.mark.gpu
def test_frame_diff_mixed_devices():
    with pytest.raises(ValueError, match="same device"):
        frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4, device="cuda"), torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))


def test_frame_diff_mixed_devices_meta():
    # Without a GPU, the meta device stands in for "another device".
    with pytest.raises(ValueError, match="same device"):
        frame_diff_concat(torch.randn(1, 2, 3, 3, 4, 4), torch.empty(3, device="meta"), torch.ones(3))


def test_frame_diff_empty():
    f = torch.randn(0, 2, 5, 3, 4, 4, requires_grad=True)
    out = frame_diff_concat(f)
    assert out.shape == (0, 12, 2, 4, 4)
    out.sum().backward()
    assert f.grad.shape == f.shape


# ---------------------------------------------------------------------------
# local_temporal_diff
# ---------------------------------------------------------------------------

# [B, T, *rest]: 2-D (no rest), M2-CLIP's [B, T, N, C] tokens, T = 1 and 2, B = 0, 5-D, R = 1.
LTD_SHAPES = [(3, 5), (2, 8, 7, 12), (2, 1, 4, 3), (1, 2, 5), (0, 4, 3, 2), (2, 3, 2, 3, 5), (4, 16, 1, 1)]


def ltd_ref_grads(x, grad):
    xr = x.detach().clone().requires_grad_(True)
    y = reference.local_temporal_diff_reference(xr)
    y.backward(grad)
    return y.detach(), xr.grad


def m2clip_tokens_view(b, t, n, c, device="cpu", dtype=torch.float32):
    """M2-CLIP's input: the patch tokens of ``[B*T, 1+N, C]`` (class token first), viewed as ``[B, T, N, C]``."""
    tokens = torch.randn(b * t, 1 + n, c, device=device).to(dtype)
    return tokens[:, 1:, :].view(b, t, n, c)


def test_reference_local_diff_matches_definition():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    manual = torch.zeros_like(x)
    for t in range(1, 5):
        manual[:, t] = x[:, t] - x[:, t - 1]
    assert torch.equal(reference.local_temporal_diff_reference(x), manual)
    g = torch.randn_like(x)
    manual_grad = torch.zeros_like(g)
    for t in range(5):  # dx[t] = g[t] * [t >= 1] - g[t+1] * [t <= T-2]
        if t >= 1:
            manual_grad[:, t] += g[:, t]
        if t <= 3:
            manual_grad[:, t] -= g[:, t + 1]
    assert torch.equal(reference.local_temporal_diff_backward_reference(g), manual_grad)
    _, autograd_grad = ltd_ref_grads(x, g)
    torch.testing.assert_close(autograd_grad, manual_grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", LTD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_local_diff_forward_backward(device, dtype, shape):
    torch.manual_seed(10)
    x = torch.randn(shape, device=device).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    xr = x.clone().requires_grad_(True)
    out = local_temporal_diff(xr)
    out.backward(grad)
    ref_out, ref_grad = ltd_ref_grads(x, grad)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    # One subtraction in float32 (float64), rounded once: every kernel matches exactly.
    assert torch.equal(out, ref_out), f"forward {dtype} {shape}"
    assert xr.grad.dtype == dtype and xr.grad.shape == x.shape
    assert torch.equal(xr.grad, reference.local_temporal_diff_backward_reference(grad)), f"grad {dtype} {shape}"
    assert_close(xr.grad, ref_grad, dtype, f"grad vs autograd {dtype} {shape}")
    if shape[1] == 1 and x.numel():
        assert not out.any() and not xr.grad.any()  # T == 1: all zeros, and so is the gradient


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["m2clip_view", "permuted_bt", "transposed_nc", "sliced_t", "expanded"])
def test_local_diff_non_contiguous(device, layout):
    torch.manual_seed(11)
    b, t, n, c = 2, 6, 5, 8
    if layout == "m2clip_view":  # read in place (the rest dims collapse to one stride)
        x = m2clip_tokens_view(b, t, n, c, device)
    elif layout == "permuted_bt":  # [T, B, N, C] memory
        x = torch.randn(t, b, n, c, device=device).transpose(0, 1)
    elif layout == "transposed_nc":  # rest dims that do not collapse: the kernels copy
        x = torch.randn(b, t, c, n, device=device).transpose(2, 3)
    elif layout == "sliced_t":
        x = torch.randn(b, 2 * t, n, c, device=device)[:, ::2]
    else:
        x = torch.randn(1, t, n, 1, device=device).expand(b, t, n, c)
    assert x.shape == (b, t, n, c) and not x.is_contiguous()
    grad = torch.randn(b, t, c, n, device=device).transpose(2, 3)  # non-contiguous grad too
    xr = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = local_temporal_diff(xr)
    out.backward(grad)
    ref_out, ref_grad = ltd_ref_grads(x.contiguous(), grad.contiguous())
    assert out.is_contiguous() and torch.equal(out, ref_out), layout
    assert torch.equal(xr.grad, ref_grad), layout + " grad"


@pytest.mark.parametrize("shape", [(2, 4, 3, 2), (1, 1, 3), (3, 2)], ids=lambda s: "x".join(map(str, s)))
def test_local_diff_gradcheck(shape):
    torch.manual_seed(12)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(local_temporal_diff, (x,))
    assert torch.autograd.gradgradcheck(local_temporal_diff, (x,))  # the backward op has autograd too


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: local_temporal_diff(torch.randn(5)), ValueError, "at least 2-D"),
        (lambda: local_temporal_diff(torch.tensor(1.0)), ValueError, "at least 2-D"),
        (lambda: local_temporal_diff(torch.randn(2, 0, 3)), ValueError, "T >= 1"),
        (lambda: local_temporal_diff(torch.ones(2, 3, 4, dtype=torch.int64)), ValueError, "torch.int64"),
        (lambda: local_temporal_diff(torch.ones(2, 3, dtype=torch.uint8)), ValueError, "float32"),
        (lambda: local_temporal_diff(torch.ones(2, 3, dtype=torch.bool)), ValueError, "float32"),
        (lambda: local_temporal_diff(torch.ones(2, 3, dtype=torch.complex64)), ValueError, "float32"),
        (lambda: local_temporal_diff([[1.0, 2.0]]), TypeError, "torch.Tensor"),
    ],
)
def test_local_diff_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# registration: opcheck, torch.compile, fallbacks
# ---------------------------------------------------------------------------

def test_opcheck_temporal_pool_diff():
    torch.manual_seed(6)
    samples = [
        (torch.randn(2, 3, 4, 3, 5, requires_grad=True), 3, 0.5),
        (torch.randn(1, 2, 1, 2, 2, dtype=torch.float64, requires_grad=True), 5, 0.0),
        (torch.randn(2, 4, 6, 3, 3).permute(0, 1, 2, 4, 3), 3, 0.25),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.tdsk.temporal_pool_diff.default, args)
    x = torch.randn(2, 3, 4, 3, 5)
    torch.library.opcheck(torch.ops.tdsk.temporal_pool_diff_backward.default, (torch.randn_like(x), x, 3, 0.5))


def test_opcheck_frame_diff_concat():
    torch.manual_seed(7)
    scale = torch.tensor([1.0, 2.0, 0.5])
    samples = [
        (torch.randn(2, 3, 5, 3, 4, 4, requires_grad=True), None, torch.float32),
        (torch.randn(1, 2, 3, 3, 2, 3, requires_grad=True), scale, torch.float32),
        (torch.randint(0, 256, (1, 2, 3, 3, 2, 3), dtype=torch.uint8), scale, torch.bfloat16),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.tdsk.frame_diff_concat.default, args)
    g = torch.randn(2, 12, 3, 4, 4)
    torch.library.opcheck(torch.ops.tdsk.frame_diff_concat_backward.default, (g, scale, 5, torch.float32))
    stats = (torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    torch.library.opcheck(torch.ops.tdsk.frame_diff_scale.default, (*stats, 255.0, torch.float32))


def test_opcheck_local_temporal_diff():
    torch.manual_seed(13)
    samples = [
        torch.randn(2, 4, 3, 5, requires_grad=True),
        torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True),
        m2clip_tokens_view(2, 3, 4, 6).requires_grad_(True),
        torch.randn(4, 2).to(torch.bfloat16),
    ]
    for x in samples:
        torch.library.opcheck(torch.ops.tdsk.local_temporal_diff.default, (x,))
        # the backward op has autograd too (its adjoint is the forward)
        g = torch.randn(x.shape, dtype=x.dtype).requires_grad_(x.requires_grad)
        torch.library.opcheck(torch.ops.tdsk.local_temporal_diff_backward.default, (g,))


class _UsesBothOps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(12, 4, kernel_size=1)

    def forward(self, frames):
        d = frame_diff_concat(frames)  # [N, 12, T, H, W]
        y = self.conv(d)
        return temporal_pool_diff(y, 3, 0.5).square().mean()


class _UsesLocalDiff(torch.nn.Module):
    """M2-CLIP's use: the patch tokens of [B*T, 1+N, C] viewed as [B, T, N, C], differenced."""

    def __init__(self, frames=4):
        super().__init__()
        self.frames = frames
        self.pre = torch.nn.Linear(6, 6)  # so that the op's input needs a gradient
        self.proj = torch.nn.Linear(6, 3)

    def forward(self, tokens):
        y = self.pre(tokens)
        bt, l1, c = y.shape
        x = y[:, 1:, :].view(bt // self.frames, self.frames, l1 - 1, c)
        return self.proj(local_temporal_diff(x)).square().mean()


@pytest.mark.parametrize("model_cls,shape", [(_UsesBothOps, (2, 4, 5, 3, 6, 6)), (_UsesLocalDiff, (8, 10, 6))],
                         ids=["pool+frame_diff", "local_temporal_diff"])
def test_torch_compile_fullgraph(model_cls, shape):
    torch.manual_seed(8)
    model = model_cls()
    inputs = torch.randn(shape)
    eager = model(inputs)
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    out = compiled(inputs)
    out.backward()
    torch.testing.assert_close(out, eager)
    for p, want in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, want)
    explanation = torch._dynamo.explain(model)(inputs)
    assert explanation.graph_break_count == 0


def _diff_with_clip_stats(frames):
    return frame_diff_concat(frames, mean=CLIP_MEAN, std=CLIP_STD)


def _diff_with_tensor_stats(frames, mean, std):
    return frame_diff_concat(frames, mean=mean, std=std)


def test_torch_compile_fullgraph_uint8_with_statistics():
    """README's uint8 example (mean/std given) traces without a graph break, both with
    sequences and with tensors as statistics, and equals eager exactly."""
    torch.manual_seed(18)
    frames = torch.randint(0, 256, (2, 3, 5, 3, 4, 6), dtype=torch.uint8)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    torch._dynamo.reset()
    assert torch._dynamo.explain(_diff_with_clip_stats)(frames).graph_break_count == 0
    assert torch._dynamo.explain(_diff_with_tensor_stats)(frames, mean, std).graph_break_count == 0
    compiled = torch.compile(_diff_with_clip_stats, fullgraph=True, backend="inductor")
    assert torch.equal(compiled(frames), _diff_with_clip_stats(frames))
    compiled_t = torch.compile(_diff_with_tensor_stats, fullgraph=True, backend="aot_eager")
    out = compiled_t(frames, mean, std)
    assert out.dtype == torch.float32 and torch.equal(out, _diff_with_tensor_stats(frames, mean, std))
    torch.testing.assert_close(out, reference.frame_diff_concat_reference(frames, mean, std))
    # The value checks still run (at run time) inside the compiled graph.
    with pytest.raises(ValueError, match="mean must be finite"):
        compiled_t(frames, torch.tensor([0.5, float("nan"), 0.5]), std)
    with pytest.raises(ValueError, match="std must be > 0"):
        compiled_t(frames, mean, torch.tensor([0.2, 0.0, 0.3]))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_frame_diff_non_finite_statistics_rejected_eager(as_tensor):
    f = torch.randint(0, 256, (1, 2, 3, 3, 2, 2), dtype=torch.uint8)
    conv = torch.tensor if as_tensor else tuple
    with pytest.raises(ValueError, match="mean must be finite"):
        frame_diff_concat(f, conv((0.5, float("inf"), 0.5)), conv(CLIP_STD))
    with pytest.raises(ValueError, match="std must be finite"):
        frame_diff_concat(f, conv(CLIP_MEAN), conv((0.2, float("nan"), 0.3)))
    with pytest.raises(ValueError, match="std must be > 0"):
        frame_diff_concat(f, conv(CLIP_MEAN), conv((0.2, -1.0, 0.3)))


def test_import_without_compiled_parts_falls_back_and_says_so_once():
    code = (
        "import torch, tdsk\n"
        "x = torch.randn(1, 2, 3, 2, 2)\n"
        "a = tdsk.ops.temporal_pool_diff(x, 3, 0.5); b = tdsk.ops.temporal_pool_diff(x, 3, 0.5)\n"
        "from tdsk.ops.reference import temporal_pool_diff_reference as r\n"
        "assert torch.equal(a, r(x, 3, 0.5)) or torch.allclose(a, r(x, 3, 0.5))\n"
        "y = torch.randn(2, 3, 4)\n"
        "assert torch.equal(tdsk.ops.local_temporal_diff(y), torch.cat([torch.zeros(2, 1, 4), y.diff(dim=1)], 1))\n"
        "print(tdsk.ops.backend_report())\n"
    )
    env = dict(os.environ, TDSK_DISABLE_EXT="1", TDSK_DISABLE_TRITON="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'cpu': 'reference'" in res.stdout
    assert res.stderr.count("TDSK_DISABLE_EXT=1") == 1, res.stderr


def test_one_op_per_function_routed_by_the_dispatcher():
    """No second operator namespace: the C++ kernels are the CPU kernels of the tdsk:: ops."""
    import tdsk

    report = tdsk.ops.backend_report()
    assert set(report) == {"cpu", "cuda"}
    for name in ("temporal_pool_diff", "temporal_pool_diff_backward", "frame_diff_concat",
                 "frame_diff_concat_backward", "local_temporal_diff", "local_temporal_diff_backward"):
        dump = torch._C._dispatch_dump(f"tdsk::{name}")
        assert "CompositeExplicitAutograd" in dump  # the reference: the default kernel
        assert ("\nCPU: registered at" in dump) == (report["cpu"] == "c++"), dump
        assert ("\nCUDA: registered at" in dump) == (report["cuda"] == "triton"), dump
        assert not hasattr(torch.ops.tdsk_cpu, name + "_forward") and not hasattr(torch.ops.tdsk_cpu, name)


def test_import_without_triton_falls_back_and_says_so_once():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, tdsk\n"
        "f = torch.randn(1, 2, 3, 3, 2, 2, requires_grad=True)\n"
        "tdsk.ops.frame_diff_concat(f).sum().backward(); tdsk.ops.frame_diff_concat(f)\n"
        "assert tdsk.ops.triton_kernels() is None\n"
        "print(tdsk.ops.backend_report())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TDSK_DISABLE_TRITON"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'cuda': 'reference'" in res.stdout
    assert res.stderr.count("Triton kernels unavailable") == 1, res.stderr


def test_disable_ext_holds_even_when_the_extension_is_imported():
    code = (
        "import torch, tdsk\n"
        "try:\n    import tdsk._C\nexcept ImportError:\n    pass\n"
        "x = torch.randn(1, 2, 3, 2, 2)\n"
        "from tdsk.ops.reference import temporal_pool_diff_reference as r\n"
        "assert torch.equal(tdsk.ops.temporal_pool_diff(x, 3, 0.5), r(x, 3, 0.5))\n"
        "assert tdsk.ops.cpu_kernels() is None\n"
        "print(tdsk.ops.backend_report())\n"
    )
    env = dict(os.environ, TDSK_DISABLE_EXT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'cpu': 'reference'" in res.stdout
    assert res.stderr.count("TDSK_DISABLE_EXT=1") == 1, res.stderr


def test_pool_diff_matches_max_pool3d_semantics_directly():
    # Independent of the reference module: F.max_pool3d is Pool of Eq. 4 (the official TD-Adapter's).
    torch.manual_seed(9)
    x = with_ties(torch.randn(2, 6, 7, 3, 4))
    for k in (3, 5, 7):
        p = F.max_pool3d(x, (k, 1, 1), stride=1, padding=(k // 2, 0, 0))
        assert torch.equal(temporal_pool_diff(x, k), x - p)
