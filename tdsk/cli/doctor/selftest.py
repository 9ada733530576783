"""The doctor's self-test: each op, side attention, DALI and a tiny model against references."""
from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from tdsk.cli.doctor.environment import _module_version, _short, devices, implementations, versions
from tdsk.ops.tolerances import OP_TOLERANCES
from tdsk.schema import CLIP_MEAN, CLIP_STD

# Side attention (inputs of unit scale) against the float64 reference on the same
# rounded inputs: the kernels' own rounding, forward and gradients.
ATTENTION_TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}

CHECK_GROUPS = ("ops", "attention", "dali", "model")


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

@dataclass
class Check:
    name: str                 # e.g. "temporal_pool_diff/cpu/float32"
    group: str                # row of the table, e.g. "temporal_pool_diff"
    device: str
    status: str = "pass"      # pass | fail | skip | error
    detail: str = ""
    impl: str = ""
    max_err: Optional[float] = None
    seconds: float = 0.0
    label: str = ""           # short sub-label in the table (dtype, ...)
    note: str = ""            # one line about a passed check (shown for one-check rows)


class Mismatch(AssertionError):
    def __init__(self, message: str, max_err: Optional[float] = None):
        super().__init__(message)
        self.max_err = max_err


def compare(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> float:
    """Raise :class:`Mismatch` unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere
    (NaN only where both are NaN); returns the largest absolute error."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mismatch(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    err = (a - e).abs()
    both_nan = torch.isnan(a) & torch.isnan(e)
    bad = ~(err <= atol + rtol * e.abs()) & ~both_nan
    finite = err[~both_nan]
    max_err = float(finite.max()) if finite.numel() else 0.0
    if bool(bad.any()):
        idx = bad.nonzero()[:3].tolist()
        raise Mismatch(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ, max err {max_err:.3g} "
                       f"(atol {atol:g}, rtol {rtol:g}), first at {idx}", max_err)
    return max_err


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _with_ties(x: torch.Tensor) -> torch.Tensor:
    """Quantise so that many temporal windows hold equal maxima (exercises the tie rule)."""
    return (x * 2).round() / 2


# (N, C, T, H, W) / (N, T, M, C, H, W): small shapes of the op tests (odd sizes, T=1..8).
POOL_CASES = [((2, 5, 3, 7, 11), 3, 0.5), ((2, 20, 8, 7, 7), 5, 0.25), ((1, 4, 1, 3, 5), 3, 1.0)]
FRAME_CASES = [((2, 3, 5, 3, 7, 5), False), ((1, 8, 3, 2, 5, 11), True)]


def _check_temporal_pool_diff(device: torch.device, dtype: torch.dtype) -> float:
    import tdsk.ops as ops
    from tdsk.ops import reference

    atol, rtol = OP_TOLERANCES[dtype]
    worst = 0.0
    for shape, k, mix in POOL_CASES:
        gen = torch.Generator().manual_seed(1)
        x = _with_ties(torch.randn(shape, generator=gen)).to(dtype)
        grad = torch.randn(shape, generator=gen).to(dtype)
        xd = x.to(device, copy=True).requires_grad_(True)
        out = ops.temporal_pool_diff(xd, k, mix)
        out.backward(grad.to(device))
        xr = x.clone().requires_grad_(True)
        ref = reference.temporal_pool_diff_reference(xr, k, mix)
        ref.backward(grad)
        what = f"shape {shape} k={k} mix={mix}"
        if out.dtype != dtype or xd.grad.dtype != dtype:
            raise Mismatch(f"{what}: dtype {out.dtype}/{xd.grad.dtype}, expected {dtype}")
        worst = max(worst, compare(out, ref, atol, rtol, f"forward {what}"))
        worst = max(worst, compare(xd.grad, xr.grad, atol, rtol, f"backward {what}"))
    return worst


def _check_frame_diff_concat(device: torch.device, dtype: torch.dtype) -> float:
    import tdsk.ops as ops
    from tdsk.ops import reference

    atol, rtol = OP_TOLERANCES[dtype]
    worst = 0.0
    for shape, normalise in FRAME_CASES:
        gen = torch.Generator().manual_seed(3)
        n, t, m, c, h, w = shape
        frames = torch.rand(shape, generator=gen).to(dtype)
        grad = torch.randn((n, (m - 1) * c, t, h, w), generator=gen).to(dtype)
        mean = std = None
        if normalise:
            mean, std = torch.linspace(0.3, 0.6, c), torch.linspace(0.2, 0.3, c)
        fd = frames.to(device, copy=True).requires_grad_(True)
        stats = (None, None) if mean is None else (mean.to(device), std.to(device))
        out = ops.frame_diff_concat(fd, *stats)
        out.backward(grad.to(device))
        fr = frames.clone().requires_grad_(True)
        ref = reference.frame_diff_concat_reference(fr, mean, std)
        ref.backward(grad)
        what = f"shape {shape}{' normalised' if normalise else ''}"
        worst = max(worst, compare(out, ref, atol, rtol, f"forward {what}"))
        worst = max(worst, compare(fd.grad, fr.grad, atol, rtol, f"backward {what}"))
    return worst


def _check_frame_diff_uint8(device: torch.device, out_dtype: torch.dtype) -> float:
    import tdsk.ops as ops
    from tdsk.ops import reference

    gen = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (2, 4, 5, 3, 9, 7), dtype=torch.uint8, generator=gen)
    out = ops.frame_diff_concat(frames.to(device), CLIP_MEAN, CLIP_STD, out_dtype=out_dtype)
    ref = reference.frame_diff_concat_reference(frames, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD), out_dtype)
    atol, rtol = OP_TOLERANCES[out_dtype]
    return compare(out, ref, atol, rtol, f"uint8 + CLIP normalisation -> {_dtype_name(out_dtype)}")


def _attention_reference(q, k, v, scale):
    s = torch.einsum("blhd,bshd->bhls", q, k) * scale
    return torch.einsum("bhls,bshd->blhd", s.softmax(dim=-1), v)


def _check_attention(device: torch.device, dtype: torch.dtype, backend: str) -> float:
    from tdsk.ops.attention import attention

    # The side blocks' pattern: L patch tokens attend to [cls, patches] (S = L + 1).
    b, l, s, h, d = 2, 16, 17, 2, 64
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(b, n, h, d, generator=gen).to(dtype) for n in (l, s, s))
    grad = torch.randn(b, l, h, d, generator=gen).to(dtype)
    scale = d ** -0.5
    qd, kd, vd = (t.to(device, copy=True).requires_grad_(True) for t in (q, k, v))
    out = attention(qd, kd, vd, scale=scale, backend=backend)
    out.backward(grad.to(device))
    q64, k64, v64 = (t.to(device, torch.float64, copy=True).requires_grad_(True) for t in (q, k, v))
    ref = _attention_reference(q64, k64, v64, scale)
    ref.backward(grad.double().to(device))
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    worst = compare(out, ref, atol, rtol, "forward")
    for name, a, e in (("dq", qd, q64), ("dk", kd, k64), ("dv", vd, v64)):
        worst = max(worst, compare(a.grad, e.grad, atol, rtol, f"backward {name}"))
    return worst


def make_test_clip(path: str, frames: int = 8, size: int = 128) -> "np.ndarray":  # noqa: F821
    """Write a small VP9 ``.webm`` with PyAV (frame ``i`` is a gradient at brightness
    ``16 + 24 i``, so every frame is told apart at once); returns the encoded frames.

    128x128 rather than smaller: NVDEC's VP9 decoder has a minimum frame size.
    """
    import av
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    imgs = []
    for i in range(frames):
        base = 16 + 24 * i
        img = np.stack([base + xx * 24 // size, base + yy * 24 // size, np.full_like(xx, base)], axis=-1)
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = frames
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"}
        for img in imgs:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return np.stack(imgs)


def _check_dali(device: torch.device, workdir: str) -> float:
    import numpy as np

    from tdsk.data.dali import DaliFrameDecoder
    from tdsk.data.decoders import read_video_frames

    path = os.path.join(workdir, "doctor_clip.webm")
    if not os.path.exists(path):
        make_test_clip(path)
    indices = np.array([0, 2, 3, 7], dtype=np.int64)
    want = read_video_frames(path, list(range(8))).astype(np.float64)  # PyAV, every frame
    if device.type == "cuda":
        decoder = DaliFrameDecoder("video", 1, device="gpu", device_id=device.index or 0, num_threads=1)
    else:
        decoder = DaliFrameDecoder("video", 1, device="cpu", num_threads=1)
    (got,) = decoder([np.fromfile(path, dtype=np.uint8)], [indices], out_device=device)
    if got.device.type != device.type:
        raise Mismatch(f"DALI returned frames on {got.device}, expected {device}")
    got = got.cpu().numpy().astype(np.float64)
    if got.shape != (len(indices),) + want.shape[1:]:
        raise Mismatch(f"DALI frames have shape {got.shape}, expected {(len(indices),) + want.shape[1:]}")
    worst = 0.0
    for j, idx in enumerate(indices):
        errs = np.abs(want - got[j]).mean(axis=(1, 2, 3))  # distance to every PyAV frame
        if int(errs.argmin()) != int(idx):
            raise Mismatch(f"DALI frame for index {idx} is closest to PyAV frame {int(errs.argmin())}")
        if errs[idx] > 3.0:
            raise Mismatch(f"DALI frame {idx} differs from PyAV's by {errs[idx]:.2f}/255 on average (> 3)",
                           float(errs[idx]))
        worst = max(worst, float(errs[idx]))
    return worst, (f"{len(indices)} frames of a 128x128 VP9 clip, mean |DALI - PyAV| <= {worst:.2f}/255")


_TINY_CACHE: Dict[str, object] = {}


def tiny_recipes() -> List[str]:
    """The model-only tiny recipes the self-test builds: ``tiny`` and every ``tiny_<family>``."""
    from tdsk.config import available_configs

    return ["tiny"] + [n for n in available_configs() if n.startswith("tiny_")]


def _tiny_model(recipe: str = "tiny"):
    if recipe not in _TINY_CACHE:
        from tdsk.models import build_model, model_config

        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            k = int(model_config(recipe)["num_classes"])
            model = build_model(recipe, class_names=[f"class {i}" for i in range(k)]).eval()
        finally:
            torch.random.set_rng_state(state)
        gen = torch.Generator().manual_seed(6)
        size = int(model.config["input_size"])  # every family's frame size (model.input_size)
        video = torch.randn(2, model.num_segments, model.num_local, 3, size, size, generator=gen)
        _TINY_CACHE[recipe] = {"model": model, "video": video}
    return _TINY_CACHE[recipe]["model"], _TINY_CACHE[recipe]["video"]


def _check_tiny_model(device: torch.device, recipe: str = "tiny") -> float:
    import copy

    model, video = _tiny_model(recipe)
    net = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    with torch.no_grad():
        logits = net(video.to(device))
    want = (video.shape[0], model.num_classes)
    if tuple(logits.shape) != want:
        raise Mismatch(f"logits shape {tuple(logits.shape)}, expected {want}")
    if not bool(torch.isfinite(logits).all()):
        raise Mismatch("logits are not finite")
    note = f"build_model({recipe!r}), logits {list(logits.shape)} finite"
    cache = _TINY_CACHE[recipe]
    if device.type == "cpu":
        cache["cpu_logits"] = logits
        return None, note
    if "cpu_logits" not in cache:
        with torch.no_grad():
            cache["cpu_logits"] = model(video)
    # cuDNN may use TF32 in the convolutions: a loose bound that still catches a wrong kernel
    err = compare(logits, cache["cpu_logits"], 1e-2, 1e-2, f"logits on {device} vs cpu")
    return err, note + f", max |{device} - cpu| {err:.2g}"


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

def _run_check(check: Check, fn: Callable[[], Optional[float]]) -> Check:
    t0 = time.perf_counter()
    try:
        result = fn()
        if isinstance(result, tuple):
            result, check.note = result
        check.max_err = None if result is None else float(result)
        check.status = "pass"
    except _Skip as exc:
        check.status, check.detail = "skip", str(exc)
    except Mismatch as exc:
        check.status, check.detail, check.max_err = "fail", str(exc), exc.max_err
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        check.status, check.detail = "error", f"{type(exc).__name__}: {_short(exc, 300)}{where}"
    if check.max_err is not None and not math.isfinite(check.max_err):
        check.max_err = None  # JSON has no NaN/inf; the detail says what happened
    check.seconds = round(time.perf_counter() - t0, 4)
    return check


class _Skip(Exception):
    pass


def _plan(dev: torch.device, impl: Dict[str, Dict[str, str]], groups, workdir: str):
    """``(Check, fn)`` pairs for one device, in order."""
    name = str(dev)
    plan = []
    if "ops" in groups:
        op_impl = impl["temporal_pool_diff"]["impl"]
        for dtype in OP_TOLERANCES:
            dn = _dtype_name(dtype)
            plan.append((Check(f"temporal_pool_diff/{name}/{dn}", "temporal_pool_diff", name, impl=op_impl, label=dn),
                         lambda dtype=dtype: _check_temporal_pool_diff(dev, dtype)))
        for dtype in OP_TOLERANCES:
            dn = _dtype_name(dtype)
            plan.append((Check(f"frame_diff_concat/{name}/{dn}", "frame_diff_concat", name, impl=op_impl, label=dn),
                         lambda dtype=dtype: _check_frame_diff_concat(dev, dtype)))
        for dtype in (torch.float32, torch.bfloat16):
            dn = _dtype_name(dtype)
            plan.append((Check(f"frame_diff_concat/{name}/uint8->{dn}", "frame_diff_concat", name, impl=op_impl,
                               label=f"u8->{dn}"), lambda dtype=dtype: _check_frame_diff_uint8(dev, dtype)))
    if "attention" in groups:
        backends = ["sdpa"]
        if dev.type == "cuda":
            if impl["attention"]["impl"] == "xformers":
                backends.append("xformers")
        dtypes = [torch.float32, torch.bfloat16] if dev.type == "cpu" else list(ATTENTION_TOLERANCES)
        for backend in backends:
            for dtype in dtypes:
                dn = _dtype_name(dtype)
                check = Check(f"attention.{backend}/{name}/{dn}", f"attention ({backend})", name, impl=backend, label=dn)
                plan.append((check, lambda dtype=dtype, backend=backend: _check_attention(dev, dtype, backend)))
        if dev.type == "cuda" and impl["attention"]["impl"] != "xformers":
            plan.append((Check(f"attention.xformers/{name}", "attention (xformers)", name, impl="-", label="-"),
                         lambda: _skip(impl["attention"]["reason"])))
    if "dali" in groups:
        def dali():
            if _module_version("nvidia.dali")["version"] is None:
                _skip(f"DALI {_module_version('nvidia.dali')['error']}")
            if _module_version("av")["version"] is None:
                _skip("PyAV not installed (needed to write the test clip)")
            return _check_dali(dev, workdir)

        plan.append((Check(f"dali_decode/{name}", "DALI decode (VP9)", name, impl="dali", label="vp9"), dali))
    if "model" in groups:
        for recipe in tiny_recipes():
            def model(recipe=recipe):
                if _module_version("open_clip", "open_clip_torch")["version"] is None:
                    _skip("open_clip not installed (pip install open-clip-torch)")
                return _check_tiny_model(dev, recipe)

            suffix = "" if recipe == "tiny" else "." + recipe[len("tiny_"):]
            plan.append((Check(f"tiny_model{suffix}/{name}", f"{recipe} model forward", name,
                               impl=impl["temporal_pool_diff"]["impl"], label="fwd"), model))
    return plan


def _skip(reason: str):
    raise _Skip(reason)


def run_doctor(only: Optional[List[str]] = None, device: str = "all") -> Dict:
    """Run every check; returns the report as a dict (what ``--json`` prints)."""
    t0 = time.perf_counter()
    groups = list(only or CHECK_GROUPS)
    vers = versions()
    devs = devices()
    impl = implementations()
    targets = [d for d in devs if device == "all" or d["type"] == device or d["name"] == device]
    checks: List[Check] = []
    with tempfile.TemporaryDirectory(prefix="tdsk-doctor-") as workdir:
        for d in targets:
            dev = torch.device(d["name"])
            for check, fn in _plan(dev, impl[d["type"]], groups, workdir):
                checks.append(_run_check(check, fn))
    _TINY_CACHE.clear()
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "error", "skip")}
    failed = [c.name for c in checks if c.status in ("fail", "error")]
    return {
        "ok": not failed,
        "summary": {"passed": counts["pass"], "failed": counts["fail"], "errors": counts["error"],
                    "skipped": counts["skip"]},
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 2),
        "versions": vers,
        "devices": devs,
        "implementations": impl,
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith("TDSK_") or k == "TRITON_INTERPRET"},
        "checks": [asdict(c) for c in checks],
    }
