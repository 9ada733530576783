"""The C++ CPU kernels (built into ``tdsk._C``, the CPU kernels of ``torch.ops.tdsk.*``) against the references.

The kernels are called directly (``tdsk.ops.cpu_kernels()``: a redispatch on the CPU
key, below the ops' autograd and argument checks), and compared with

* the pure-PyTorch reference forwards (:mod:`tdsk.ops.reference`) and their autograd
  gradients, and
* the hand-written backward references of :mod:`tdsk.ops.reference` (the default
  kernels of the ops), which the kernels must match bit for bit where the operation
  order is the same (float32/any dtype with ``channel_mix == 0``, frame_diff_concat
  and local_temporal_diff always).
"""
import os

import pytest
import torch

from tdsk.ops import cpu_kernels, reference
from tdsk.ops import temporal_diff as td

K = cpu_kernels()
if K is None:  # pragma: no cover - exercised only without a build, or with TDSK_DISABLE_EXT=1
    pytest.skip(
        "the C++ kernels do not serve the CPU (tdsk._C not built, or TDSK_DISABLE_EXT=1); build it with "
        "`pip install --no-build-isolation -e .`",
        allow_module_level=True,
    )

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (rtol, atol) where the kernel and the reference sum in a different order (the channel
# mean with channel_mix != 0): a few units in the last place of the dtype.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 6e-2),
}

# [N, C, T, H, W]: T = 1, 2, 3, 16; odd/prime H and W; N = 1..3; C = 1..64.
POOL_SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 2, 5, 7),
    (3, 8, 3, 13, 11),
    (1, 64, 16, 7, 3),
    (1, 5, 16, 1, 17),
]


def _close(actual, expected, dtype, exact):
    if exact:
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected), (actual.float() - expected.float()).abs().max()
    else:
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _ref_grad(x, g, k, mix):
    xr = x.detach().clone().requires_grad_(True)
    reference.temporal_pool_diff_reference(xr, k, mix).backward(g)
    return xr.grad


def _randn(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------
# temporal_pool_diff
# ---------------------------------------------------------------------------

ROUTES_TO_CPP = pytest.mark.skipif(
    os.environ.get("TDSK_DISABLE_EXT") == "1", reason="TDSK_DISABLE_EXT=1: the public ops use the reference"
)


@ROUTES_TO_CPP
def test_backend_is_cpp():
    from tdsk.ops import backend_report

    assert backend_report()["cpu"] == "c++"


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("mix", [0.0, 0.3, 0.5, 1.0])
def test_pool_forward_backward(dtype, k, mix):
    for i, shape in enumerate(POOL_SHAPES):
        x = _randn(shape, dtype, seed=i)
        g = _randn(shape, dtype, seed=100 + i)
        out = K.temporal_pool_diff_forward(x, k, mix)
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
        # mix == 0: the same formula x - max, rounded once, in every dtype.
        _close(out, reference.temporal_pool_diff_reference(x, k, mix), dtype, exact=mix == 0.0)

        gx = K.temporal_pool_diff_backward(g, x, k, mix)
        assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous()
        _close(gx, reference.temporal_pool_diff_backward_reference(g, x, k, mix), dtype, exact=mix == 0.0)
        _close(gx, _ref_grad(x, g, k, mix), dtype, exact=False)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_pool_ties_go_to_the_earliest_frame(mix):
    gen = torch.Generator().manual_seed(0)
    # Integer values in a small range: most windows have ties.
    x = torch.randint(-2, 3, (3, 6, 16, 5, 7), generator=gen).float()
    g = torch.randn(x.shape, generator=gen)
    for k in (3, 5, 7):
        _close(K.temporal_pool_diff_forward(x, k, mix), reference.temporal_pool_diff_reference(x, k, mix),
               torch.float32, exact=mix == 0.0)
        gx = K.temporal_pool_diff_backward(g, x, k, mix)
        # max_pool3d (the reference's autograd) also routes a tie to the earliest frame.
        _close(gx, _ref_grad(x, g, k, mix), torch.float32, exact=mix == 0.0)
        _close(gx, reference.temporal_pool_diff_backward_reference(g, x, k, mix), torch.float32, exact=mix == 0.0)
    # All frames equal: every window's gradient goes to its first frame.
    x = torch.zeros(1, 1, 4, 1, 1)
    g = torch.ones(1, 1, 4, 1, 1)
    gx = K.temporal_pool_diff_backward(g, x, 3, 0.0).flatten().tolist()
    # windows: t=0 -> [0,1] argmax 0; t=1 -> [0..2] argmax 0; t=2 -> [1..3] argmax 1; t=3 -> [2,3] argmax 2
    assert gx == [1 - 2, 1 - 1, 1 - 1, 1 - 0]


def _noncontiguous_pool_inputs(shape):
    n, c, t, h, w = shape
    base = _randn((n, t, c, h, w), torch.float32, seed=7)
    yield "permuted NTC->NCT (native strides)", base.permute(0, 2, 1, 3, 4)
    yield "channels_last_3d", base.permute(0, 2, 1, 3, 4).contiguous(memory_format=torch.channels_last_3d)
    yield "strided W (copy path)", _randn((n, c, t, h, 2 * w), torch.float32, seed=8)[..., ::2]
    yield "transposed H/W", _randn((n, c, t, w, h), torch.float32, seed=9).transpose(3, 4)
    yield "sliced T", _randn((n, c, t + 3, h, w), torch.float32, seed=10)[:, :, 1 : t + 1]
    yield "expanded N", _randn((1, c, t, h, w), torch.float32, seed=11).expand(n, c, t, h, w)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_pool_noncontiguous(mix):
    shape = (2, 6, 5, 7, 9)
    g_base = _randn((2, 5, 6, 7, 9), torch.float32, seed=12)
    grads = {
        "contiguous": g_base.permute(0, 2, 1, 3, 4).contiguous(),
        "permuted": g_base.permute(0, 2, 1, 3, 4),
        "expanded": torch.ones(()).expand(shape),
        "strided W": _randn((2, 6, 5, 7, 18), torch.float32, seed=13)[..., ::2],
    }
    for name, x in _noncontiguous_pool_inputs(shape):
        assert x.shape == shape and not x.is_contiguous(), name
        xc = x.contiguous()
        out = K.temporal_pool_diff_forward(x, 3, mix)
        assert out.is_contiguous()
        assert torch.equal(out, K.temporal_pool_diff_forward(xc, 3, mix)), name
        _close(out, reference.temporal_pool_diff_reference(xc, 3, mix), torch.float32, exact=mix == 0.0)
        for gname, g in grads.items():
            gx = K.temporal_pool_diff_backward(g, x, 3, mix)
            assert torch.equal(gx, K.temporal_pool_diff_backward(g.contiguous(), xc, 3, mix)), (name, gname)
            _close(gx, reference.temporal_pool_diff_backward_reference(g.contiguous(), xc, 3, mix), torch.float32,
                   exact=mix == 0.0)


def test_pool_spatial_blocks_and_threads():
    # Large enough for several spatial blocks per work item (with a ragged last block)
    # and for parallel_for to split; the result must not depend on the thread count.
    x = _randn((1, 64, 16, 24, 23), torch.float32, seed=3)
    g = _randn(x.shape, torch.float32, seed=4)
    for mix in (0.0, 0.5):
        out = K.temporal_pool_diff_forward(x, 3, mix)
        gx = K.temporal_pool_diff_backward(g, x, 3, mix)
        _close(out, reference.temporal_pool_diff_reference(x, 3, mix), torch.float32, exact=mix == 0.0)
        _close(gx, reference.temporal_pool_diff_backward_reference(g, x, 3, mix), torch.float32, exact=mix == 0.0)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(out, K.temporal_pool_diff_forward(x, 3, mix))
            assert torch.equal(gx, K.temporal_pool_diff_backward(g, x, 3, mix))
        finally:
            torch.set_num_threads(threads)


def test_pool_large_kernel_runtime_window():
    # Windows of more than 8 frames take the runtime-count path.
    x = _randn((2, 3, 20, 3, 5), torch.float32, seed=5)
    g = _randn(x.shape, torch.float32, seed=6)
    for k in (9, 17, 41):
        _close(K.temporal_pool_diff_forward(x, k, 0.0), reference.temporal_pool_diff_reference(x, k, 0.0),
               torch.float32, exact=True)
        _close(K.temporal_pool_diff_backward(g, x, k, 0.0), _ref_grad(x, g, k, 0.0), torch.float32, exact=False)


def test_pool_nan_propagates():
    x = _randn((1, 2, 6, 2, 3), torch.float32, seed=1)
    x[0, 1, 2, 1, 1] = float("nan")
    out = K.temporal_pool_diff_forward(x, 3, 0.0)
    torch.testing.assert_close(out, reference.temporal_pool_diff_reference(x, 3, 0.0), equal_nan=True)
    assert torch.isnan(out[0, 1, 1:4, 1, 1]).all()


def test_pool_empty_and_mixed_grad_dtype():
    x = torch.empty(0, 3, 4, 5, 5)
    assert K.temporal_pool_diff_forward(x, 3, 0.5).shape == x.shape
    assert K.temporal_pool_diff_backward(x, x, 3, 0.5).shape == x.shape
    x = _randn((2, 3, 4, 5, 5), torch.float32, seed=0)
    g = _randn(x.shape, torch.float64, seed=1)
    gx = K.temporal_pool_diff_backward(g, x, 3, 0.0)
    assert gx.dtype == torch.float32
    assert torch.equal(gx, K.temporal_pool_diff_backward(g.float(), x, 3, 0.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: K.temporal_pool_diff_forward(torch.zeros(2, 3, 4, 5), 3, 0.0), "5-D"),
        (lambda: K.temporal_pool_diff_forward(torch.zeros(1, 1, 2, 1, 1), 2, 0.0), "odd"),
        (lambda: K.temporal_pool_diff_forward(torch.zeros(1, 1, 2, 1, 1), -1, 0.0), "odd"),
        (lambda: K.temporal_pool_diff_forward(torch.zeros(1, 1, 2, 1, 1), 3, 1.5), "channel_mix"),
        (lambda: K.temporal_pool_diff_forward(torch.zeros(1, 1, 2, 1, 1, dtype=torch.int32), 3, 0.0), "float"),
        (lambda: K.temporal_pool_diff_backward(torch.zeros(1, 1, 3, 1, 1), torch.zeros(1, 1, 2, 1, 1), 3, 0.0),
         "shape"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 2, 2, 1, 1), None, torch.float32), "6-D"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 1, 1, 1, 1, 1), None, torch.float32), "M >= 2"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 1, 2, 3, 1, 1), torch.ones(2), torch.float32),
         "scale"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 1, 2, 3, 1, 1), torch.ones(3, dtype=torch.float64),
                                             torch.float32), "float32"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 1, 2, 1, 1, 1, dtype=torch.int16), None,
                                             torch.float32), "uint8"),
        (lambda: K.frame_diff_concat_forward(torch.zeros(1, 1, 2, 1, 1, 1), None, torch.int32), "out_dtype"),
        (lambda: K.frame_diff_concat_backward(torch.zeros(1, 3, 1, 1, 1), None, 3, torch.float32), "multiple"),
        (lambda: K.frame_diff_concat_backward(torch.zeros(1, 2, 1, 1, 1), None, 3, torch.uint8), "frames_dtype"),
        (lambda: K.local_temporal_diff_forward(torch.zeros(4)), "at least 2-D"),
        (lambda: K.local_temporal_diff_forward(torch.zeros(2, 3, dtype=torch.int32)), "float32"),
        (lambda: K.local_temporal_diff_backward(torch.zeros(())), "at least 2-D"),
        (lambda: K.local_temporal_diff_backward(torch.zeros(2, 3, dtype=torch.uint8)), "float32"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


# ---------------------------------------------------------------------------
# frame_diff_concat
# ---------------------------------------------------------------------------

# [N, T, M, C, H, W] with M in {2, 3, 5}.
FDC_SHAPES = [
    (1, 1, 2, 1, 1, 1),
    (2, 3, 3, 3, 7, 5),
    (3, 2, 5, 3, 13, 11),
    (1, 16, 5, 2, 3, 17),
]


def _frames(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _scale(c, seed):
    gen = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(c, generator=gen)).to(torch.float32)


@pytest.mark.parametrize("in_dtype", FLOATS + [torch.uint8], ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("with_scale", [False, True])
def test_fdc_matches_scaled_reference_exactly(in_dtype, out_dtype, with_scale):
    for i, shape in enumerate(FDC_SHAPES):
        f = _frames(shape, in_dtype, seed=i)
        n, t, m, c, h, w = shape
        scale = _scale(c, seed=50 + i) if with_scale else None
        out = K.frame_diff_concat_forward(f, scale, out_dtype)
        assert out.shape == (n, (m - 1) * c, t, h, w) and out.dtype == out_dtype and out.is_contiguous()
        _close(out, reference.frame_diff_concat_scaled_reference(f, scale, out_dtype), out_dtype, exact=True)
        if in_dtype == torch.uint8:
            continue  # no gradient for integer frames
        g = _randn(out.shape, out_dtype, seed=200 + i)
        grad = K.frame_diff_concat_backward(g, scale, m, in_dtype)
        assert grad.shape == shape and grad.dtype == in_dtype and grad.is_contiguous()
        _close(grad, reference.frame_diff_concat_backward_reference(g, scale, m, in_dtype), in_dtype, exact=True)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_fdc_matches_reference_autograd(dtype):
    for i, shape in enumerate(FDC_SHAPES):
        f = _frames(shape, dtype, seed=i)
        m = shape[2]
        out = K.frame_diff_concat_forward(f, None, dtype)
        fr = f.clone().requires_grad_(True)
        ref = reference.frame_diff_concat_reference(fr)
        _close(out, ref.detach(), dtype, exact=True)
        g = _randn(out.shape, dtype, seed=300 + i)
        ref.backward(g)
        _close(K.frame_diff_concat_backward(g, None, m, dtype), fr.grad, dtype, exact=False)


def test_fdc_uint8_with_mean_std_matches_reference():
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    scale = (1.0 / (std.double() * 255.0)).float()  # what the public op passes
    for i, shape in enumerate([(2, 3, 5, 3, 9, 7), (1, 8, 2, 3, 4, 5), (1, 2, 3, 3, 1, 13)]):
        f = _frames(shape, torch.uint8, seed=i)
        for out_dtype in FLOATS:
            out = K.frame_diff_concat_forward(f, scale, out_dtype)
            ref = reference.frame_diff_concat_reference(f, mean, std, out_dtype)
            rtol, atol = TOL[out_dtype]
            torch.testing.assert_close(out, ref, rtol=max(rtol, 1e-6), atol=max(atol, 1e-5))


def _noncontiguous_frames(shape):
    n, t, m, c, h, w = shape
    yield "channels-last HWC", _frames((n, t, m, h, w, c), torch.float32, 1).permute(0, 1, 2, 5, 3, 4)
    yield "strided W", _frames((n, t, m, c, h, 2 * w), torch.float32, 2)[..., ::2]
    yield "permuted T/M", _frames((n, m, t, c, h, w), torch.float32, 3).transpose(1, 2)
    yield "sliced M", _frames((n, t, m + 2, c, h, w), torch.float32, 4)[:, :, 1 : m + 1]
    yield "expanded N", _frames((1, t, m, c, h, w), torch.float32, 5).expand(n, t, m, c, h, w)


@pytest.mark.parametrize("with_scale", [False, True])
def test_fdc_noncontiguous(with_scale):
    shape = (2, 3, 5, 3, 6, 7)
    n, t, m, c, h, w = shape
    scale = _scale(c, 9) if with_scale else None
    for name, f in _noncontiguous_frames(shape):
        assert f.shape == shape and not f.is_contiguous(), name
        out = K.frame_diff_concat_forward(f, scale, torch.float32)
        assert torch.equal(out, reference.frame_diff_concat_scaled_reference(f.contiguous(), scale, torch.float32)), name
    # uint8 channels-last frames, as a decoder delivers them
    f8 = _frames((n, t, m, h, w, c), torch.uint8, 6).permute(0, 1, 2, 5, 3, 4)
    assert torch.equal(K.frame_diff_concat_forward(f8, scale, torch.float32),
                       reference.frame_diff_concat_scaled_reference(f8.contiguous(), scale, torch.float32))
    # non-contiguous incoming gradients
    out_shape = (n, (m - 1) * c, t, h, w)
    grads = {
        "permuted": _randn((n, t, (m - 1) * c, h, w), torch.float32, 7).transpose(1, 2),
        "channels_last_3d": _randn(out_shape, torch.float32, 8).contiguous(memory_format=torch.channels_last_3d),
        "strided W": _randn((n, (m - 1) * c, t, h, 2 * w), torch.float32, 9)[..., ::2],
        "expanded": torch.ones(()).expand(out_shape),
    }
    for name, g in grads.items():
        assert g.shape == out_shape and not g.is_contiguous(), name
        grad = K.frame_diff_concat_backward(g, scale, m, torch.float32)
        assert torch.equal(
            grad, reference.frame_diff_concat_backward_reference(g.contiguous(), scale, m, torch.float32)), name


def test_fdc_threads_and_empty():
    f = _frames((2, 4, 5, 3, 48, 40), torch.float32, 0)
    g = _randn((2, 12, 4, 48, 40), torch.float32, 1)
    out = K.frame_diff_concat_forward(f, None, torch.float32)
    grad = K.frame_diff_concat_backward(g, None, 5, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(out, K.frame_diff_concat_forward(f, None, torch.float32))
        assert torch.equal(grad, K.frame_diff_concat_backward(g, None, 5, torch.float32))
    finally:
        torch.set_num_threads(threads)
    e = K.frame_diff_concat_forward(torch.empty(0, 2, 3, 3, 4, 4), None, torch.float32)
    assert e.shape == (0, 6, 2, 4, 4)
    eg = K.frame_diff_concat_backward(torch.empty(0, 6, 2, 4, 4), None, 3, torch.float16)
    assert eg.shape == (0, 2, 3, 3, 4, 4) and eg.dtype == torch.float16


# ---------------------------------------------------------------------------
# local_temporal_diff
# ---------------------------------------------------------------------------

# [B, T, *rest]: T = 1, 2, 3, 16; 2-D; M2-CLIP's [B, T, N, C]; rows long enough to be split
# between work items (R = 197 * 40 > the grain) and a ragged chunk boundary.
LTD_SHAPES = [(1, 1), (3, 2), (2, 3, 7, 5), (1, 16, 1, 17), (2, 8, 197, 40), (3, 1, 4, 3)]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_ltd_matches_references(dtype):
    for i, shape in enumerate(LTD_SHAPES):
        x = _randn(shape, dtype, seed=i)
        g = _randn(shape, dtype, seed=400 + i)
        out = K.local_temporal_diff_forward(x)
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
        _close(out, reference.local_temporal_diff_reference(x), dtype, exact=True)
        gx = K.local_temporal_diff_backward(g)
        assert gx.shape == x.shape and gx.dtype == dtype and gx.is_contiguous()
        _close(gx, reference.local_temporal_diff_backward_reference(g), dtype, exact=True)
        xr = x.clone().requires_grad_(True)
        reference.local_temporal_diff_reference(xr).backward(g)
        _close(gx, xr.grad, dtype, exact=False)
        if shape[1] == 1:
            assert not out.any() and not gx.any()


def _noncontiguous_ltd_inputs(b, t, n, c):
    tokens = _randn((b * t, 1 + n, c), torch.float32, seed=20)
    yield "M2-CLIP tokens[:, 1:].view (in place)", tokens[:, 1:, :].view(b, t, n, c)
    yield "permuted B/T (in place)", _randn((t, b, n, c), torch.float32, seed=21).transpose(0, 1)
    yield "sliced T (in place)", _randn((b, t + 2, n, c), torch.float32, seed=22)[:, 1 : t + 1]
    yield "strided C (in place, stride 2)", _randn((b, t, n, 2 * c), torch.float32, seed=23)[..., ::2]
    yield "transposed N/C (copy)", _randn((b, t, c, n), torch.float32, seed=24).transpose(2, 3)
    yield "expanded B (in place, stride 0)", _randn((1, t, n, c), torch.float32, seed=25).expand(b, t, n, c)


def test_ltd_noncontiguous():
    b, t, n, c = 2, 5, 7, 6
    for name, x in _noncontiguous_ltd_inputs(b, t, n, c):
        assert x.shape == (b, t, n, c) and not x.is_contiguous(), name
        out = K.local_temporal_diff_forward(x)
        assert out.is_contiguous(), name
        assert torch.equal(out, reference.local_temporal_diff_reference(x.contiguous())), name
        # grad_out with the same (non-contiguous) layouts
        gx = K.local_temporal_diff_backward(x)
        assert torch.equal(gx, reference.local_temporal_diff_backward_reference(x.contiguous())), name


def test_ltd_threads_and_empty():
    x = _randn((4, 8, 196, 48), torch.float32, seed=0)
    out = K.local_temporal_diff_forward(x)
    gx = K.local_temporal_diff_backward(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(out, K.local_temporal_diff_forward(x))
        assert torch.equal(gx, K.local_temporal_diff_backward(x))
    finally:
        torch.set_num_threads(threads)
    for shape in ((0, 3, 4), (2, 3, 0), (2, 0)):
        e = torch.empty(shape, dtype=torch.float16)
        assert K.local_temporal_diff_forward(e).shape == shape
        assert K.local_temporal_diff_backward(e).dtype == torch.float16


@ROUTES_TO_CPP
def test_public_ops_route_to_cpp_and_agree():
    # Through the custom ops (autograd included): same numbers as the kernels.
    x = _randn((2, 20, 8, 14, 14), torch.float32, seed=0).requires_grad_(True)  # TD-Adapter shape, N=2
    g = _randn(x.shape, torch.float32, seed=1)
    y = td.temporal_pool_diff(x, 3, 0.5)
    y.backward(g)
    assert torch.equal(y.detach(), K.temporal_pool_diff_forward(x.detach(), 3, 0.5))
    assert torch.equal(x.grad, K.temporal_pool_diff_backward(g, x.detach(), 3, 0.5))
    f = _randn((2, 3, 5, 3, 8, 8), torch.float32, seed=2).requires_grad_(True)
    out = td.frame_diff_concat(f)
    gf = _randn(out.shape, torch.float32, seed=3)
    out.backward(gf)
    assert torch.equal(f.grad, K.frame_diff_concat_backward(gf, None, 5, torch.float32))
    tokens = _randn((16, 197, 64), torch.float32, seed=4).requires_grad_(True)  # M2-CLIP, B=2, T=8
    x = tokens[:, 1:, :].view(2, 8, 196, 64)
    y = td.local_temporal_diff(x)
    gy = _randn(y.shape, torch.float32, seed=5)
    y.backward(gy)
    assert torch.equal(y.detach(), K.local_temporal_diff_forward(x.detach()))
    assert torch.equal(tokens.grad[:, 1:].reshape(2, 8, 196, 64), K.local_temporal_diff_backward(gy))
    assert not tokens.grad[:, 0].any()  # the class token is not part of the difference


# (forward(x), backward(g, x)) of the kernels under test
KERNEL_PAIRS = {
    "pool-mix0": (lambda x: K.temporal_pool_diff_forward(x, 3, 0.0),
                  lambda g, x: K.temporal_pool_diff_backward(g, x, 3, 0.0)),
    "pool-mix0.5": (lambda x: K.temporal_pool_diff_forward(x, 3, 0.5),
                    lambda g, x: K.temporal_pool_diff_backward(g, x, 3, 0.5)),
    "local_temporal_diff": (K.local_temporal_diff_forward, lambda g, x: K.local_temporal_diff_backward(g)),
}


@pytest.mark.parametrize("pair", list(KERNEL_PAIRS))
def test_gradcheck_through_kernels(pair):
    fwd, bwd = KERNEL_PAIRS[pair]

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return fwd(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return bwd(g, x)

    # Distinct values (no ties) so the max is differentiable.
    x = torch.randperm(2 * 3 * 5 * 2 * 3, dtype=torch.float64).reshape(2, 3, 5, 2, 3).div(7).requires_grad_(True)
    assert torch.autograd.gradcheck(F.apply, (x,))
