"""The Triton kernels themselves (``tdsk.kernels``), launcher by launcher, against the references.

Without a GPU they run on CPU tensors under ``TRITON_INTERPRET=1`` (set by
``tests/conftest.py`` before anything imports Triton). The interpreter costs about
10-40 ms per program instance, so shapes are tiny and every launch is a few dozen
programs at most; with a GPU the same tests run the compiled kernels on CUDA.

Oracles: :func:`tdsk.ops.reference.temporal_pool_diff_reference` (forward), the
hand-written reference backward :func:`tdsk.ops.reference.temporal_pool_diff_backward_reference`
(whose tie rule, earliest frame of the window, is the kernels' contract) and autograd of
the reference, the scaled frame-difference references and the local temporal
difference references of :mod:`tdsk.ops.reference`.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import tdsk.kernels as K  # noqa: E402
from tdsk.ops import reference  # noqa: E402
from tdsk.ops.reference import (  # noqa: E402
    frame_diff_concat_backward_reference,
    frame_diff_concat_scaled_reference,
    local_temporal_diff_backward_reference,
    local_temporal_diff_reference,
    temporal_pool_diff_backward_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
# with a GPU every test here runs the compiled kernels: `pytest -m gpu` selects them (conftest)
pytestmark = pytest.mark.cuda_when_available

# (rtol, atol) per dtype, for results that are not bit-exact (channel-mean
# summation order, half-precision rounding of a value both sides compute in fp32).
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def _close(actual, expected, dtype=None):
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def _exact(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected), f"max abs diff {(actual.double() - expected.double()).abs().max().item()}"


def _quantised(shape, dtype=torch.float32, levels=3, seed=0):
    """Small integers: many exact ties inside every temporal window."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=g).to(dtype).to(DEVICE)


def _randn(shape, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(DEVICE)


def _check_pool(x, k, a, g=None, exact=None, **launch):
    """Forward and backward of one launch configuration against the references."""
    out = K.temporal_pool_diff_forward(x, k, a, **launch)
    ref = reference.temporal_pool_diff_reference(x, k, a)
    assert out.is_contiguous() and out.dtype == x.dtype and out.shape == x.shape
    if exact is None:
        exact = x.dtype == torch.float32 and a == 0.0
    if exact:
        _exact(out, ref)
    else:
        _close(out, ref)

    if g is None:
        g = _randn(x.shape, x.dtype, seed=7)
    gx = K.temporal_pool_diff_backward(g, x, k, a, **launch)
    gref = temporal_pool_diff_backward_reference(g, x, k, a)
    assert gx.is_contiguous() and gx.dtype == x.dtype and gx.shape == x.shape
    # Same operations in the same order as the reference's scatter_add (CPU);
    # CUDA's scatter_add uses atomics, so there only a tolerance is meaningful.
    if exact and DEVICE == "cpu":
        _exact(gx, gref)
    else:
        _close(gx, gref)
    return out, gx


# ---------------------------------------------------------------------------
# temporal_pool_diff
# ---------------------------------------------------------------------------

# (shape [N, C, T, H, W], kernel_size, channel_mix); float32, quantised (tied) inputs.
POOL_CASES = [
    ((2, 3, 1, 5, 7), 3, 0.0),     # T = 1: the window is the frame itself, out == 0
    ((2, 3, 1, 5, 7), 3, 0.5),
    ((2, 3, 2, 7, 5), 1, 0.0),     # k = 1: out == 0
    ((2, 3, 2, 7, 5), 3, 1.0),     # T = 2, a = 1: only the channel mean
    ((1, 20, 3, 5, 3), 3, 0.5),    # the TD-Adapter's R = 20 channels, official a
    ((1, 20, 3, 5, 3), 5, 0.0),    # window wider than the clip
    ((1, 1, 5, 7, 11), 7, 0.5),    # C = 1: the mean is the value itself
    ((1, 3, 16, 3, 5), 3, 0.0),    # T = 16 (tiny elsewhere)
    ((1, 3, 16, 3, 5), 7, 0.5),
    ((1, 64, 3, 3, 3), 5, 0.5),    # 64 channels, tiny plane
    ((3, 5, 4, 1, 13), 3, 0.0),    # H = 1
]


@pytest.mark.parametrize("shape,k,a", POOL_CASES, ids=[f"{s}-k{k}-a{a}" for s, k, a in POOL_CASES])
def test_temporal_pool_diff_fp32_ties(shape, k, a):
    x = _quantised(shape)
    out, _ = _check_pool(x, k, a)
    if shape[2] == 1 or k == 1:
        assert not out.any()


def test_temporal_pool_diff_randn_k7():
    _check_pool(_randn((2, 4, 6, 3, 5)), 7, 0.5)


def test_temporal_pool_diff_backward_matches_autograd():
    """Hand-written reference backward aside, the kernel equals autograd of the reference."""
    x = _quantised((1, 5, 6, 3, 5), levels=4)
    g = _randn(x.shape, seed=3)
    for k, a in ((3, 0.0), (5, 0.5)):
        xr = x.clone().requires_grad_(True)
        reference.temporal_pool_diff_reference(xr, k, a).backward(g)
        gx = K.temporal_pool_diff_backward(g, x, k, a)
        _close(gx, xr.grad)


def test_temporal_pool_diff_tie_goes_to_earliest_frame():
    # One pixel, one channel, a plateau: frames 1..3 tie for the max of every window.
    x = torch.tensor([0.0, 2.0, 2.0, 2.0, 1.0], device=DEVICE).view(1, 1, 5, 1, 1)
    g = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0], device=DEVICE).view(1, 1, 5, 1, 1)
    gx = K.temporal_pool_diff_backward(g, x, 3, 0.0)
    # windows (k=3): t=0 -> argmax 1, t=1 -> 1, t=2 -> 1 (earliest of 1,2,3), t=3 -> 2, t=4 -> 3
    expected = g.clone()
    expected[0, 0, 1] -= 1.0 + 10.0 + 100.0
    expected[0, 0, 2] -= 1000.0
    expected[0, 0, 3] -= 10000.0
    _exact(gx, expected)
    _exact(gx, temporal_pool_diff_backward_reference(g, x, 3, 0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("a", [0.0, 0.5])
def test_temporal_pool_diff_dtypes(dtype, a):
    shape = (1, 5, 4, 3, 5)
    _check_pool(_randn(shape, dtype), 3, a)
    _check_pool(_quantised(shape, dtype, seed=2), 5, a)


def test_temporal_pool_diff_fp64_channel_mix_full_precision():
    # a / C with C = 3 is not representable in float32: the kernel gets it as float64.
    x = _randn((1, 3, 5, 2, 3), torch.float64)
    out = K.temporal_pool_diff_forward(x, 3, 1.0 / 3.0)
    torch.testing.assert_close(out, reference.temporal_pool_diff_reference(x, 3, 1.0 / 3.0), rtol=1e-14, atol=1e-14)


def test_temporal_pool_diff_non_contiguous():
    # channels-last-3d: [N, T, H, W, C] memory seen as [N, C, T, H, W]
    x = _quantised((1, 5, 3, 6, 4)).permute(0, 4, 1, 2, 3)
    assert not x.is_contiguous() and x.shape == (1, 4, 5, 3, 6)
    g = _randn((1, 3, 6, 4, 5), seed=4).permute(0, 3, 4, 1, 2)  # [N, H, W, C, T] memory for grad_out
    _check_pool(x, 3, 0.0, g=g)
    _check_pool(x, 3, 0.5, g=g)

    # sliced: every other channel, a cropped plane with an odd base width, so that
    # (H, W) is not addressable as one flat index (the h // W, w % W path)
    base = _quantised((1, 6, 5, 7, 11), seed=5)
    x = base[:, ::2, :, 1:, ::2]
    assert x.stride(3) != x.shape[4] * x.stride(4)
    g = _randn((1, 3, 5, 8, 6), seed=6)[:, :, :, :6, :]  # non-flat grad plane too
    _check_pool(x, 5, 0.0, g=g)
    _check_pool(x, 3, 0.5, g=g)

    # frame axis reversed by a view with a large temporal stride, plus an expanded (stride 0) channel axis
    x = _quantised((1, 1, 4, 3, 5), seed=8).expand(2, 3, 4, 3, 5)
    _check_pool(x, 3, 0.5)


@pytest.mark.parametrize("k,a", [(3, 0.5), (5, 1.0), (3, 0.0)])
def test_temporal_pool_diff_channel_blocks(k, a):
    """Several channel blocks (per program: the two-pass channel mean) and several HW blocks."""
    x = _quantised((1, 5, 3, 3, 3), seed=9)
    _check_pool(x, k, a, block_c=2, block_hw=8)


def test_temporal_pool_diff_int64_offsets():
    """The 64-bit offset variant (chosen automatically beyond 2**31 elements), forced on a small tensor."""
    x = _quantised((1, 4, 3, 3, 4), seed=10)[:, :, :, :, 1:]  # non-flat plane: h // W, w % W in int64
    _check_pool(x, 3, 0.0, force_int64=True)
    _check_pool(x, 5, 0.5, force_int64=True, block_c=2, block_hw=8)
    _check_pool(x.double(), 3, 0.5, force_int64=True)


def test_int64_offsets_are_chosen_beyond_int32():
    """The launchers' int32 / int64 decision, on meta tensors (no memory)."""
    from tdsk.kernels._common import needs_int64

    small = torch.empty((2, 3, 4, 5, 6), device="meta")
    assert not needs_int64(small)
    # a view whose address range, not its element count, passes 2**31
    assert needs_int64(small.as_strided(small.shape, (2**31, 120, 30, 6, 1)))
    assert needs_int64(torch.empty((2**31,), device="meta", dtype=torch.uint8))
    assert not needs_int64(torch.empty((2**31 - 1,), device="meta", dtype=torch.uint8))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, by design
def test_temporal_pool_diff_nan_and_inf_follow_reference():
    """NaN propagates like max_pool3d's; the gradient goes to the first NaN of a window (torch.argmax)."""
    x = _quantised((1, 2, 6, 2, 3), seed=11)
    x[0, 0, 2, 0, 0] = float("nan")
    x[0, 1, 1, 1, 1] = float("nan")
    x[0, 0, 3, 1, 2] = float("-inf")
    x[0, 1, 0, 0, 1] = float("inf")
    for k, a in ((3, 0.0), (5, 0.5)):
        _check_pool(x, k, a, exact=False)


# ---------------------------------------------------------------------------
# frame_diff_concat
# ---------------------------------------------------------------------------

def _bit_exact_possible(dtype):
    # The kernels do the reference's operations in the reference's order, so the
    # results are bit-exact -- except that the Triton *interpreter* converts
    # float32 -> bfloat16 by truncation where the GPU (cvt.rn) and PyTorch round to
    # nearest even: under the interpreter bfloat16 results may differ by one ulp.
    return not (INTERPRETED and dtype == torch.bfloat16)


def _check_fdc(frames, scale, out_dtype, g=None, **launch):
    n, t, m, c, h, w = frames.shape
    out = K.frame_diff_concat_forward(frames, scale, out_dtype, **launch)
    ref = frame_diff_concat_scaled_reference(frames, scale, out_dtype)
    assert out.is_contiguous() and out.shape == (n, (m - 1) * c, t, h, w) and out.dtype == out_dtype
    (_exact if _bit_exact_possible(out_dtype) else _close)(out, ref)
    if frames.is_floating_point():
        if g is None:
            g = _randn(out.shape, out_dtype, seed=12)
        gf = K.frame_diff_concat_backward(g, scale, m, frames.dtype, **launch)
        gref = frame_diff_concat_backward_reference(g, scale, m, frames.dtype)
        assert gf.is_contiguous() and gf.shape == frames.shape and gf.dtype == frames.dtype
        (_exact if _bit_exact_possible(frames.dtype) else _close)(gf, gref)
    return out


def _scale(c, seed=13):
    g = torch.Generator().manual_seed(seed)
    std = 0.2 + 0.1 * torch.rand(c, generator=g, dtype=torch.float64)
    return (1.0 / (std * 255.0)).to(torch.float32).to(DEVICE)


@pytest.mark.parametrize("m", [2, 5])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_frame_diff_concat_uint8_scaled(m, out_dtype):
    g = torch.Generator().manual_seed(14)
    frames = torch.randint(0, 256, (2, 3, m, 3, 5, 7), generator=g, dtype=torch.uint8).to(DEVICE)
    _check_fdc(frames, _scale(3), out_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("with_scale", [False, True])
def test_frame_diff_concat_float(dtype, with_scale):
    frames = _randn((2, 3, 5, 4, 3, 5), dtype, seed=15)
    _check_fdc(frames, _scale(4) if with_scale else None, dtype)


def test_frame_diff_concat_mixed_precision():
    # float32 frames -> float64 out: computed in float64; float64 frames -> float32 out likewise
    _check_fdc(_randn((1, 2, 3, 3, 3, 5), torch.float32), _scale(3), torch.float64)
    _check_fdc(_randn((1, 2, 3, 3, 3, 5), torch.float64), _scale(3), torch.float32)


def test_frame_diff_concat_non_contiguous():
    n, t, m, c, h, w = 2, 3, 5, 3, 4, 6
    # the official loader's (N*T, M*C, H, W) tensor, decoded channels-last, viewed as 6-D
    g = torch.Generator().manual_seed(16)
    official = torch.randint(0, 256, (n * t, h, w, m * c), generator=g, dtype=torch.uint8).to(DEVICE).permute(0, 3, 1, 2)
    frames = official.view(n, t, m, c, h, w)
    assert not frames.is_contiguous()
    _check_fdc(frames, _scale(c), torch.float32)

    # a crop with an odd base width (non-flat plane), float frames, non-contiguous grad_out
    base = _randn((n, t, m, c, 7, 11), seed=17)
    frames = base[:, :, :, :, 1:6, ::2]
    assert frames.shape == (n, t, m, c, 5, 6)
    grad = _randn((n, 5, t, (m - 1) * c, 6), seed=18).permute(0, 3, 2, 1, 4)  # plane strides (t*72, 1): non-flat
    _check_fdc(frames, _scale(c), torch.float32, g=grad)
    _check_fdc(frames, None, torch.float32, g=grad)


def test_frame_diff_concat_blocks_and_int64():
    frames = _randn((1, 2, 4, 5, 3, 7), seed=19)
    _check_fdc(frames, _scale(5), torch.float32, block_c=2, block_hw=4)
    _check_fdc(frames, _scale(5), torch.float32, force_int64=True)
    g = torch.Generator().manual_seed(20)
    u8 = torch.randint(0, 256, (1, 2, 3, 3, 3, 5), generator=g, dtype=torch.uint8).to(DEVICE)
    _check_fdc(u8, _scale(3), torch.float32, block_c=1, block_hw=8, force_int64=True)


# ---------------------------------------------------------------------------
# local_temporal_diff
# ---------------------------------------------------------------------------

def _check_ltd(x, g=None, **launch):
    out = K.local_temporal_diff_forward(x, **launch)
    assert out.is_contiguous() and out.shape == x.shape and out.dtype == x.dtype
    (_exact if _bit_exact_possible(x.dtype) else _close)(out, local_temporal_diff_reference(x))
    if g is None:
        g = _randn(x.shape, x.dtype, seed=21)
    gx = K.local_temporal_diff_backward(g, **launch)
    assert gx.is_contiguous() and gx.shape == g.shape and gx.dtype == g.dtype
    (_exact if _bit_exact_possible(g.dtype) else _close)(gx, local_temporal_diff_backward_reference(g))
    return out, gx


# [B, T, *rest]: 2-D, T = 1, 2, 16, M2-CLIP's [B, T, N, C], 5-D
LTD_CASES = [(3, 4), (2, 1, 5, 3), (2, 2, 7), (1, 16, 3, 5), (2, 8, 7, 12), (1, 3, 2, 3, 5)]


@pytest.mark.parametrize("shape", LTD_CASES, ids=lambda s: "x".join(map(str, s)))
def test_local_temporal_diff_fp32(shape):
    out, gx = _check_ltd(_randn(shape, seed=22))
    if shape[1] == 1:
        assert not out.any() and not gx.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_local_temporal_diff_dtypes(dtype):
    _check_ltd(_randn((2, 5, 3, 7), dtype, seed=23))


def test_local_temporal_diff_backward_matches_autograd():
    x = _randn((2, 6, 3, 4), torch.float64, seed=24)
    g = _randn(x.shape, torch.float64, seed=25)
    xr = x.clone().requires_grad_(True)
    local_temporal_diff_reference(xr).backward(g)
    torch.testing.assert_close(K.local_temporal_diff_backward(g), xr.grad, rtol=0, atol=1e-15)


def test_local_temporal_diff_non_contiguous():
    b, t, n, c = 2, 4, 5, 6
    g = torch.Generator().manual_seed(26)
    tokens = torch.randn(b * t, 1 + n, c, generator=g).to(DEVICE)
    grad = _randn((t, b, n, c), seed=27).transpose(0, 1)  # [T, B, ...] memory for grad_out
    for x in (
        tokens[:, 1:, :].view(b, t, n, c),                       # M2-CLIP's view: read in place
        _randn((b, t, n, 2 * c), seed=28)[..., ::2],             # rest stride 2: in place
        _randn((b, t, c, n), seed=29).transpose(2, 3),           # rest dims do not collapse: copy
        _randn((1, t, n, c), seed=30).expand(b, t, n, c),        # stride-0 B
    ):
        assert not x.is_contiguous()
        _check_ltd(x, g=grad)


def test_local_temporal_diff_blocks_and_int64():
    x = _randn((2, 3, 5, 7), seed=31)
    _check_ltd(x, block=8)  # several blocks per row, a ragged last one
    _check_ltd(x, force_int64=True)
    _check_ltd(x[:, :, :, ::2], block=4, force_int64=True)


# ---------------------------------------------------------------------------
# package surface, and the compiled kernels through the public ops (GPU only)
# ---------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("TDSK_DISABLE_TRITON") == "1",
                    reason="TDSK_DISABLE_TRITON=1: the ops do not use the Triton kernels")
def test_package_exports_the_six_launchers():
    from tdsk.ops import triton_kernels

    for name in ("temporal_pool_diff_forward", "temporal_pool_diff_backward",
                 "frame_diff_concat_forward", "frame_diff_concat_backward",
                 "local_temporal_diff_forward", "local_temporal_diff_backward"):
        assert callable(getattr(K, name))
    assert triton_kernels() is K


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_public_ops_on_cuda_realistic_shapes(dtype):
    from tdsk.ops.temporal_diff import frame_diff_concat, temporal_pool_diff

    for shape in ((32, 20, 8, 14, 14), (2, 320, 16, 28, 28)):
        x = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_(True)
        for k, a in ((3, 0.0), (3, 0.5), (7, 0.5)):
            out = temporal_pool_diff(x, k, a)
            ref = reference.temporal_pool_diff_reference(x.detach(), k, a)
            if dtype == torch.float32 and a == 0.0:
                _exact(out, ref)
            else:
                _close(out, ref)
            g = torch.randn_like(out)
            (gx,) = torch.autograd.grad(out, x, g)
            _close(gx, temporal_pool_diff_backward_reference(g, x.detach(), k, a))

    frames = torch.randint(0, 256, (4, 8, 5, 3, 224, 224), device="cuda", dtype=torch.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    out = frame_diff_concat(frames, mean, std, out_dtype=dtype)
    # the reference normalises each frame before differencing (the kernel scales the
    # difference), so this is a tolerance comparison
    _close(out, reference.frame_diff_concat_reference(frames, torch.tensor(mean, device="cuda"),
                                                      torch.tensor(std, device="cuda"), out_dtype=dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_local_temporal_diff_on_cuda_realistic_shapes(dtype):
    """M2-CLIP ViT-B/16 tokens (B=8 clips x T=8 frames, 1+196 tokens, C=768), through the public op."""
    from tdsk.ops.temporal_diff import local_temporal_diff

    tokens = torch.randn(64, 197, 768, device="cuda", dtype=dtype).requires_grad_(True)
    x = tokens[:, 1:, :].view(8, 8, 196, 768)
    out = local_temporal_diff(x)
    _exact(out, local_temporal_diff_reference(x.detach()))
    g = torch.randn_like(out)
    (gt,) = torch.autograd.grad(out, tokens, g)
    _exact(gt[:, 1:].reshape(out.shape), local_temporal_diff_backward_reference(g))
    assert not gt[:, 0].any()


@pytest.mark.gpu
def test_gradcheck_on_cuda_float64():
    from tdsk.ops.temporal_diff import frame_diff_concat, local_temporal_diff, temporal_pool_diff

    x = torch.randn(2, 3, 5, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: temporal_pool_diff(v, 3, 0.5), (x,))
    f = torch.randn(1, 2, 3, 2, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: frame_diff_concat(v, (0.5, 0.4), (0.2, 0.3)), (f,))
    y = torch.randn(2, 5, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(local_temporal_diff, (y,))
    assert torch.autograd.gradgradcheck(local_temporal_diff, (y,))


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter never compiles: run the real Triton compiler for sm_90 (no GPU needed).

    Catches what only the compiler rejects (types of loop-carried values, int64 /
    int32 mixes, constexpr misuse) on CI machines without a GPU; ~15 s.
    """
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton build has no bundled ptxas")
    script = Path(__file__).resolve().parents[1] / "bench" / "triton_compile_check.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), "--quick"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "all variants compiled for sm_90" in proc.stdout
