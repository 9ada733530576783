"""Compile the tdsk Triton kernels for Hopper (sm_90) on any machine, GPU or not.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not that
they compile: this script runs the real Triton compiler (Triton's bundled ptxas,
no driver needed) on the configurations the launchers pick for the shapes of
``bench/bench_ops.py`` (the ViT-B/16 TD-Adapter training shape, a large one, the
SME-Adapter's 4 clips of 8 x 5 frames at 224 px, and M2-CLIP's ViT-B/16 patch tokens) and reports, per variant, registers,
stack (spill) bytes and the number of vectorised global loads/stores in the PTX.

    python bench/triton_compile_check.py           # all configurations, a table
    python bench/triton_compile_check.py --quick   # one variant per kernel code path (CI)

Integer arguments get Triton's runtime specialisation by hand: strides of 1 become
constants and arguments that are multiples of 16 get the divisibility hint, as
the JIT would do for the listed (contiguous) shapes.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: this script needs the compiler, not the interpreter")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import frame_diff_concat as fdc  # noqa: E402
from kernels import local_temporal_diff as ltd  # noqa: E402
from kernels import temporal_pool_diff as tpd  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16, "fp64": tl.float64}
SIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8, "u8": 1}


def compile_variant(fn, ptrs, consts, num_warps, ones=(), div16=(), i64=(), fp64_args=()):
    """Compile one specialisation; return (registers, stack bytes, vector loads, vector stores)."""
    sig, const = {}, dict(consts)
    for name in fn.arg_names:
        if name in consts or name in ones:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = "*" + ptrs[name]
        elif name in fp64_args:
            sig[name] = "fp64"
        else:
            sig[name] = "i64" if name in i64 else "i32"
    const.update({n: 1 for n in ones})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in fn.arg_names if sig[n] != "constexpr" and (n in ptrs or n in div16)}
    k = triton.compile(ASTSource(fn, sig, constexprs=const, attrs=attrs), target=TARGET,
                       options={"num_warps": num_warps, "enable_fp_fusion": False})
    regs = stack = None
    if os.path.exists(CUOBJDUMP):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        regs = int(re.search(r"REG:(\d+)", out).group(1))
        stack = int(re.search(r"STACK:(\d+)", out).group(1))
    ptx = k.asm["ptx"]
    vld = len(re.findall(r"ld\.global(?:\.\w+)*\.v[248]", ptx))
    vst = len(re.findall(r"st\.global(?:\.\w+)*\.v[248]", ptx))
    return regs, stack, vld, vst


def pool_variant(shape, dt, k, a, backward, flat=True, int64=False, blocks=None):
    n, c, t, h, w = shape
    pad, mix = min(k // 2, t - 1), a != 0.0
    bc, bhw, warps = blocks or tpd._blocks(c, h * w, mix, backward, SIZE[dt], False, None, None)
    consts = dict(PAD=pad, MIX=mix, SINGLE_C=bc >= c, BLOCK_C=bc, BLOCK_HW=bhw,
                  X_HW_FLAT=flat, USE_INT64=int64, ACC=tl.float64 if dt == "fp64" else tl.float32)
    if backward:
        fn, ptrs = tpd._temporal_pool_diff_bwd_kernel, {"g_ptr": dt, "x_ptr": dt, "gx_ptr": dt}
        consts.update(KP=triton.next_power_of_2(2 * pad + 1), G_HW_FLAT=flat)
    else:
        fn, ptrs = tpd._temporal_pool_diff_fwd_kernel, {"x_ptr": dt, "out_ptr": dt}
    ones = tuple(x for x in ("sxw", "sgw") if flat and x in fn.arg_names)
    div16 = [x for x, v in (("C", c), ("T", t), ("HW", h * w), ("sxc", t * h * w), ("sgc", t * h * w),
                            ("sxt", h * w), ("sgt", h * w), ("sxn", c * t * h * w), ("sgn", c * t * h * w))
             if v % 16 == 0]
    r = compile_variant(fn, ptrs, consts, warps, ones=ones, div16=div16,
                        i64=("sxn", "sgn") if int64 else (), fp64_args=("one_minus_a", "a_over_c"))
    return f"{'bwd' if backward else 'fwd'} {shape} {dt} k={k} a={a} flat={flat} i64={int64} tile={bc}x{bhw}/w{warps}", r


def fdc_variant(shape, dt_in, dt_out, scale, backward, flat=True, int64=False):
    n, t, m, c, h, w = shape
    bc, bhw, warps = fdc._blocks(c, h * w, SIZE[dt_in], False, None, None)
    consts = dict(HAS_SCALE=scale, BLOCK_C=bc, BLOCK_HW=bhw, HW_FLAT=flat, USE_INT64=int64,
                  ACC=tl.float64 if "fp64" in (dt_in, dt_out) else tl.float32)
    if backward:
        fn, ptrs, ones = fdc._frame_diff_concat_bwd_kernel, {"g_ptr": dt_out, "scale_ptr": "fp32", "gf_ptr": dt_in}, ("sgw",)
    else:
        fn, ptrs, ones = fdc._frame_diff_concat_fwd_kernel, {"f_ptr": dt_in, "scale_ptr": "fp32", "out_ptr": dt_out}, ("sfw",)
    div16 = ("HW", "sfn", "sft", "sfm", "sfc", "sgn", "sgc", "sgt", "out_j_stride", "g_j_stride", "gf_m_stride") \
        if (h * w) % 16 == 0 else ()
    r = compile_variant(fn, ptrs, consts, warps, ones=ones if flat else (), div16=div16)
    return f"fdc_{'bwd' if backward else 'fwd'} {shape} {dt_in}->{dt_out} scale={scale} flat={flat} i64={int64} tile={bc}x{bhw}/w{warps}", r


def ltd_variant(shape, dt, backward, unit_stride=True, int64=False):
    b, t, n, c = shape  # the view tokens[:, 1:, :].view(B, T, N, C) of [B*T, 1+N, C] tokens
    bk, warps = ltd._block(n * c, False, None)
    consts = dict(BLOCK=bk, USE_INT64=int64, ACC=tl.float64 if dt == "fp64" else tl.float32)
    if backward:
        fn, ptrs, ones = ltd._local_temporal_diff_bwd_kernel, {"g_ptr": dt, "gx_ptr": dt}, ("sgr",)
    else:
        fn, ptrs, ones = ltd._local_temporal_diff_fwd_kernel, {"x_ptr": dt, "out_ptr": dt}, ("sxr",)
    div16 = ("R", "sxb", "sxt", "sgb", "sgt") if (n * c) % 16 == 0 and ((1 + n) * c) % 16 == 0 else ()
    r = compile_variant(fn, ptrs, consts, warps, ones=ones if unit_stride else (), div16=div16,
                        i64=("sxb", "sgb") if int64 else ())
    return f"ltd_{'bwd' if backward else 'fwd'} {shape} {dt} unit_stride={unit_stride} i64={int64} tile={bk}/w{warps}", r


TRAIN, LARGE, SME, M2CLIP = (32, 20, 8, 14, 14), (8, 320, 16, 28, 28), (4, 8, 5, 3, 224, 224), (4, 8, 196, 768)


def variants(quick):
    if quick:  # every kernel-body code path once: mix single/multi-block, int64, non-flat
        yield pool_variant(TRAIN, "bf16", 3, 0.5, False)
        yield pool_variant(LARGE, "fp32", 5, 0.5, False, flat=False, int64=True)
        yield pool_variant(LARGE, "bf16", 3, 0.5, True, int64=True)
        yield pool_variant(TRAIN, "fp64", 7, 0.0, True, flat=False)
        yield pool_variant(TRAIN, "fp16", 3, 0.5, True)
        yield fdc_variant(SME, "u8", "fp32", True, False)
        yield fdc_variant(SME, "bf16", "fp64", False, True, flat=False, int64=True)
        yield ltd_variant(M2CLIP, "bf16", False)
        yield ltd_variant(M2CLIP, "fp64", True, unit_stride=False, int64=True)
        return
    for dt in ("fp32", "bf16"):
        for shape in (TRAIN, LARGE):
            for k, a in ((3, 0.0), (3, 0.5), (7, 0.5)):
                for bwd in (False, True):
                    yield pool_variant(shape, dt, k, a, bwd)
    yield pool_variant(LARGE, "fp64", 5, 0.5, False)
    yield pool_variant(LARGE, "fp64", 5, 0.5, True)
    for dt_in, dt_out, scale in (("u8", "fp32", True), ("u8", "bf16", True), ("fp32", "fp32", False), ("bf16", "bf16", True)):
        yield fdc_variant(SME, dt_in, dt_out, scale, False)
        if dt_in != "u8":
            yield fdc_variant(SME, dt_in, dt_out, scale, True)
    for dt in ("fp32", "bf16", "fp16"):
        for bwd in (False, True):
            yield ltd_variant(M2CLIP, dt, bwd)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one variant per code path")
    args = parser.parse_args(argv)
    worst_stack = 0
    for name, (regs, stack, vld, vst) in variants(args.quick):
        print(f"{name:<90} regs={regs} stack={stack} vec_ld={vld} vec_st={vst}", flush=True)
        worst_stack = max(worst_stack, stack or 0)
    print(f"all variants compiled for sm_90; largest stack frame {worst_stack} bytes")


if __name__ == "__main__":
    main()
