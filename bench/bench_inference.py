"""CPU inference throughput of TDS-CLIP B/16 (``pytest bench/bench_inference.py --benchmark-only``).

One view = 8 segments x 5 frames at 224 (``ssv1_b16`` with ``clip_pretrained=None``, eval
mode, batch 1, ``torch.no_grad``), clips/s, all rows in one run with the same weights:

* ``official_fp32_eager``: the test suite's independent re-statement of the official model
  (``tests/test_models_parity.py``: ``nn.MultiheadAttention``, Conv3d/BatchNorm3d on volumes,
  the official ``(B*T, M*3, H, W)`` input), fp32 eager, tdsk's weights loaded strictly;
* ``tdsk_fp32``: tdsk's model, fp32 eager;
* ``tdsk_bf16_autocast``: tdsk, ``torch.autocast("cpu", bfloat16)`` eager;
* ``tdsk``: tdsk, bf16 autocast + ``torch.compile`` (Inductor, ``freezing=True``: weights
  are constants, so their bf16 casts and the eval BatchNorms fold into the compiled graph);
* ``onnxruntime_fp32``: the fp32 ONNX export (``tdsk.export.export_onnx``) in ONNX Runtime
  (CPU execution provider, as many intra-op threads as torch uses);
* ``tdsk_int8``: tdsk with int8 linear layers (:func:`tdsk.models.quantize.quantize_int8`:
  ``torch.ao`` dynamic quantisation, x86 engine), eager: the path for CPUs without fast bf16.

An AVX2-only CPU is approximated with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``;
fbgemm (the x86 int8 engine) picks its own instruction set from the CPU, so on a CPU with
AVX512-VNNI its int8 row is faster than it would be on a real AVX2-only CPU: the report says
which ISA each library could use.

The floor: the model's FLOPs per view (``torch.utils.flop_counter.FlopCounterMode`` on the
meta device, as in ``bench/bench_model.py``; 2 FLOPs per MAC) over this machine's bf16
matmul rate, measured in the same run as a 2048^3 bf16 ``torch.mm`` (row ``matmul``; an fp32
row next to it gives the bf16/fp32 ratio, i.e. how much bf16 can gain on matmul-bound code).

After the module the ratios are printed (tdsk's best over the official-style fp32 eager;
% of the bf16 floor; bf16 logits against fp32) and, with ``--tdsk-summary PATH``, written
as a Markdown table to ``PATH`` with the extension ``.md`` (the JSON itself is written by
``bench/conftest.py``). The load average (``os.getloadavg``) is recorded before and after:
on a shared 2-core machine every number depends on it. Nothing here asserts a timing or a
tolerance (the bf16 tolerance is asserted in ``tests/test_export.py``).
"""
import os
import platform
import sys
import time

import pytest
import torch

from tdsk.models import build_model, official_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = "b16_1view_8x5x224"
OP, MODE = "inference", "eval"
MATMUL_N = 2048
ROUNDS = int(os.environ.get("TDSK_BENCH_ROUNDS", "5"))
PROVIDERS = {
    "official_fp32_eager": "official-style re-statement (tests/test_models_parity.py), fp32 eager",
    "tdsk_fp32": "tdsk, fp32 eager",
    "tdsk_bf16_autocast": "tdsk, bf16 autocast, eager",
    "tdsk": "tdsk, bf16 autocast + torch.compile (Inductor, freezing)",
    "onnxruntime_fp32": "tdsk fp32 ONNX export in ONNX Runtime",
    "tdsk_int8": "tdsk, int8 linear layers (tdsk.models.quantize, torch.ao dynamic), eager",
}

_RESULTS = {"rows": {}, "logits": {}}


def flops_per_view() -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta_model = build_model("ssv1_b16", clip_pretrained=None).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta_model(torch.empty(1, 8, 5, 3, 224, 224))
    return int(counter.get_total_flops())


@pytest.fixture(scope="module")
def b16(request, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("ssv1_b16", clip_pretrained=None).eval()
    view = torch.randn(1, 8, 5, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    state = {"model": model, "view": view, "flops": flops_per_view(), "tmp": tmp_path_factory.mktemp("inference")}
    _RESULTS.update(load_before=os.getloadavg(), flops=state["flops"], started=time.strftime("%Y-%m-%d %H:%M"))
    yield state
    _RESULTS["load_after"] = os.getloadavg()
    report = _report()
    print("\n" + report)
    path = request.config.getoption("--tdsk-summary")
    if path:
        md = os.path.splitext(path)[0] + ".md"
        os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
        with open(md, "w") as fh:
            fh.write(report)
        print(f"inference report written to {md}")


def _official_runner(state):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_models_parity import OfficialTDSCLIP  # noqa: PLC0415  (the re-statement, reused)

    ref = OfficialTDSCLIP(768, 12, 16, 224, 320, 174, 8).eval()
    ref.load_state_dict(official_state_dict(state["model"]), strict=True)
    official_input = state["view"].reshape(-1, 15, 224, 224)  # (B*T, M*3, H, W)
    return lambda: ref(official_input)


def _onnx_runner(state):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tdsk.export import export_onnx  # noqa: PLC0415

    path = str(state["tmp"] / "b16.onnx")
    start = time.perf_counter()
    export_onnx(state["model"], path)
    _RESULTS["onnx_export_s"] = time.perf_counter() - start
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"video": state["view"].numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _runner(provider, state):
    model, view = state["model"], state["view"]
    if provider == "official_fp32_eager":
        return _official_runner(state)
    if provider == "tdsk_fp32":
        return lambda: model(view)
    if provider == "tdsk_bf16_autocast":
        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(view)
        return bf16
    if provider == "tdsk":
        compiled = torch.compile(model, options={"freezing": True})

        def fast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(view)
        start = time.perf_counter()
        with torch.no_grad():
            fast()  # compile now, outside the timed rounds
        _RESULTS["compile_s"] = time.perf_counter() - start
        return fast
    if provider == "onnxruntime_fp32":
        return _onnx_runner(state)
    if provider == "tdsk_int8":
        from tdsk.models.quantize import int8_available, quantize_int8  # noqa: PLC0415

        if not int8_available():
            pytest.skip("no quantized CPU engine in this PyTorch build")
        quantised = quantize_int8(model)
        _RESULTS["int8_engine"] = torch.backends.quantized.engine
        return lambda: quantised(view)
    raise KeyError(provider)


def _skip_slow_bf16(what: str) -> None:
    """A CPU without fast bf16 emulates it (a bf16 2048^3 matmul took ~68 s a round on an
    AVX2-only CPU): such rows would take many minutes and measure nothing a user runs
    (``precision="auto"`` picks int8 there)."""
    from tdsk.engine.precision import cpu_bf16_support  # noqa: PLC0415

    ok, why = cpu_bf16_support()
    if not ok:
        _RESULTS.setdefault("skipped", []).append(what)
        pytest.skip(f"{what}: {why}")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_matmul_rate(record, benchmark, b16, dtype):
    """The machine's matmul rate (2048^3 ``torch.mm``): bf16 is the floor's denominator; fp32
    (context) says how far bf16 can take a model whose time is matmul. Without fast bf16 the
    floor is the fp32 one."""
    if dtype == "bf16":
        _skip_slow_bf16("bf16 matmul")
    gen = torch.Generator().manual_seed(0)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dt)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dt)
    out = torch.empty(MATMUL_N, MATMUL_N, dtype=dt)
    flops = 2 * MATMUL_N ** 3
    median = record(lambda: torch.mm(a, b, out=out), op="matmul", case=f"{MATMUL_N}^3", mode=dtype,
                    provider="torch", flops=flops, rounds=max(20, ROUNDS))
    _RESULTS["matmul_s" if dtype == "bf16" else "matmul_fp32_s"] = median
    benchmark.extra_info["tflops_per_s"] = flops / median / 1e12


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_b16_inference(record, benchmark, b16, provider):
    if provider in ("tdsk_bf16_autocast", "tdsk"):
        _skip_slow_bf16(provider)
    print(f"\n[bench_inference] {provider}: {PROVIDERS[provider]} ...", flush=True)
    fn = _runner(provider, b16)
    first = {}

    def once():
        with torch.no_grad():
            out = fn()
        first.setdefault("logits", out)
        return out

    median = record(once, op=OP, case=CASE, mode=MODE, provider=provider, flops_per_view=b16["flops"],
                    views=1, description=PROVIDERS[provider], rounds=ROUNDS)
    _RESULTS["rows"][provider] = median
    _RESULTS["logits"][provider] = first["logits"].detach().float().reshape(1, -1)
    benchmark.extra_info["clips_per_s"] = 1.0 / median


# ----------------------------------------------------------------------------- report

def _report() -> str:
    rows, logits = _RESULTS["rows"], _RESULTS["logits"]
    flops = _RESULTS["flops"]
    floor_kind = "bf16"
    rate = 2 * MATMUL_N ** 3 / _RESULTS["matmul_s"] if "matmul_s" in _RESULTS else None
    if rate is None and "matmul_fp32_s" in _RESULTS:  # no fast bf16: the fp32 floor
        floor_kind, rate = "fp32", 2 * MATMUL_N ** 3 / _RESULTS["matmul_fp32_s"]
    floor = flops / rate if rate else None
    base = rows.get("official_fp32_eager")
    ref = logits.get("tdsk_fp32")
    machine = (f"cpu-{platform.machine()}-{os.cpu_count()}threads" if not torch.cuda.is_available()
               else torch.cuda.get_device_name(0))
    cpu = _cpu_model()
    lines = [
        f"# TDS-CLIP B/16 inference on the CPU ({machine})",
        "",
        f"Command: `pytest bench/bench_inference.py --benchmark-only --tdsk-summary <path>.json`, "
        f"{_RESULTS['started']}. Machine: **{machine}** ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. One view = 8 segments x 5 frames at 224, batch 1, eval, "
        f"`ssv1_b16` with `clip_pretrained=None` (random weights, the same in every row); median of "
        f"{ROUNDS} rounds after warm-up. Load average (1, 5, 15 min) before: "
        f"{_fmt_load(_RESULTS.get('load_before'))}, after: {_fmt_load(_RESULTS.get('load_after'))}.",
        "",
        f"Floor: {flops / 1e9:.1f} GFLOPs per view (FlopCounterMode, 2 per MAC) / "
        + (f"{rate / 1e12:.3f} TFLOP/s {floor_kind} matmul ({MATMUL_N}^3 `torch.mm`, same run) = **{floor * 1e3:.0f} ms** "
           f"per view ({1 / floor:.2f} clips/s)." if rate else "no matmul row."),
        "",
        (f"fp32 matmul: {2 * MATMUL_N ** 3 / _RESULTS['matmul_fp32_s'] / 1e12:.3f} TFLOP/s, so bf16 / fp32 = "
         f"{_RESULTS['matmul_fp32_s'] / _RESULTS['matmul_s']:.2f}x; at the fp32 rate the model's FLOPs take "
         f"{flops * _RESULTS['matmul_fp32_s'] / (2 * MATMUL_N ** 3) * 1e3:.0f} ms"
         + (f" (the official-style fp32 eager runs at {100 * flops * _RESULTS['matmul_fp32_s'] / (2 * MATMUL_N ** 3) / base:.0f}% "
            "of that)." if base else ".")) if "matmul_fp32_s" in _RESULTS and "matmul_s" in _RESULTS else "",
        (f"Skipped (no fast bf16 on this CPU): {', '.join(_RESULTS['skipped'])}." if _RESULTS.get("skipped") else ""),
        "",
        f"| provider | what | median | clips/s | vs official fp32 eager | % of {floor_kind} floor | max abs logit diff vs tdsk fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in PROVIDERS:
        if name not in rows:
            continue
        med = rows[name]
        speed = f"{base / med:.2f}x" if base else ""
        pct = f"{100 * floor / med:.0f}%" if floor else ""
        diff = ""
        if ref is not None and name in logits:
            diff = f"{(logits[name] - ref).abs().max().item():.2e}" if name != "tdsk_fp32" else "0"
        lines.append(f"| {name} | {PROVIDERS[name]} | {med * 1e3:.0f} ms | {1 / med:.2f} | {speed} | {pct} | {diff} |")
    if ref is not None:
        lines += ["", f"Logit scale: max |tdsk fp32 logit| = {ref.abs().max().item():.3f} (random weights)."]
    extra = []
    if "compile_s" in _RESULTS:
        extra.append(f"torch.compile (first call) {_RESULTS['compile_s']:.0f} s")
    if "onnx_export_s" in _RESULTS:
        extra.append(f"ONNX export {_RESULTS['onnx_export_s']:.0f} s")
    if "int8_engine" in _RESULTS:
        extra.append(f"int8 engine {_RESULTS['int8_engine']}")
    isa = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    lines += ["", "Instruction sets: ATen " + torch.backends.cpu.get_cpu_capability()
              + (f" (limited by {', '.join(f'{k}={v}' for k, v in isa.items())})" if isa else "")
              + "; fbgemm (int8) picks its own from the CPU."]
    if extra:
        lines += ["", "One-off costs, not timed: " + "; ".join(extra) + "."]
    return "\n".join(lines) + "\n"


def _fmt_load(load):
    return "n/a" if load is None else ", ".join(f"{v:.2f}" for v in load)


def _cpu_model() -> str:
    from tdsk.cli.doctor import cpu_name

    return cpu_name()
