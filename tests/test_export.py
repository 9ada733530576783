"""Export (``tdsk.export``): ONNX and ``.pt2`` graphs that run without tdsk, the model folder,
the command line; the decompositions of the custom ops; bf16 inference tolerance.

ONNX tests skip cleanly when ``onnx``/``onnxscript``/``onnxruntime`` are not importable
(they are in the ``test`` extra, so CI runs them). Everything runs on the CPU with the
tiny config.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import run_tool
from tdsk import export as E
from tdsk.models import build_model, export_official
from tdsk.ops.decompositions import decompose, decomposition_table, has_tdsk_ops

ONNX_ATOL = 1e-4  # ONNX Runtime vs eager fp32 (the bound); measured ~1e-7 on the tiny model
PT2_ATOL = 1e-5  # the .pt2 runs the same ATen ops as eager (the references for the two tdsk ops)


def _onnx_stack():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name} not installed (pip install -e '.[deploy]')")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", clip_pretrained=None).eval()
    # non-trivial BatchNorm statistics, so that eval-mode BN is really exercised
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(0.2 * torch.randn(mod.num_features, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=gen))
    return model


def _clips(model, batch, seed=1, views=1):
    return E.example_input(model, batch=batch, views=views, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def program(tiny):
    return E.export_program(tiny)


# ----------------------------------------------------------------------------- decompositions

def test_every_tdsk_op_has_a_decomposition_equal_to_the_op():
    """The table covers every op of the tdsk library, and each entry computes what the op does."""
    table = decomposition_table()
    names = {op.name().split("::")[1] for op in table}
    assert names == {"temporal_pool_diff", "temporal_pool_diff_backward", "frame_diff_concat",
                     "frame_diff_concat_backward", "frame_diff_scale", "local_temporal_diff",
                     "local_temporal_diff_backward"}
    gen = torch.Generator().manual_seed(0)
    ops = torch.ops.tdsk
    x = torch.randn(2, 6, 5, 3, 4, generator=gen)
    g = torch.randn(2, 6, 5, 3, 4, generator=gen)
    frames = torch.randn(2, 3, 5, 3, 4, 4, generator=gen)
    scale = torch.rand(3, generator=gen) + 0.5
    gd = torch.randn(2, 12, 3, 4, 4, generator=gen)
    mean, std = torch.rand(3, generator=gen), torch.rand(3, generator=gen) + 0.1
    cases = [
        (ops.temporal_pool_diff.default, (x, 3, 0.5)),
        (ops.temporal_pool_diff_backward.default, (g, x, 3, 0.5)),
        (ops.frame_diff_concat.default, (frames, None, torch.float32)),
        (ops.frame_diff_concat.default, (frames, scale, torch.bfloat16)),
        (ops.frame_diff_concat_backward.default, (gd, scale, 5, torch.float32)),
        (ops.frame_diff_scale.default, (mean, std, 255.0, torch.float32)),
        (ops.local_temporal_diff.default, (g.permute(0, 2, 1, 3, 4),)),  # [B, T, C, H, W], a view
        (ops.local_temporal_diff_backward.default, (x,)),
    ]
    for op, args in cases:
        want, got = op(*args), table[op](*args)
        assert got.dtype == want.dtype and got.shape == want.shape, op
        torch.testing.assert_close(got.float(), want.float(), atol=1e-6, rtol=1e-5, msg=str(op))


def test_decompose_leaves_no_tdsk_op_and_keeps_the_numbers(tiny, program):
    with torch.no_grad():
        raw = torch.export.export(tiny, (_clips(tiny, 2),))
    assert has_tdsk_ops(raw)  # the model really calls the custom ops
    assert not has_tdsk_ops(program)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.max_pool3d.default" in targets  # temporal_pool_diff's reference
    assert not has_tdsk_ops(decompose(raw, core_aten=True))
    for batch in (1, 3):  # dynamic batch
        video = _clips(tiny, batch)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(video), tiny(video), atol=PT2_ATOL, rtol=0)


def test_export_refuses_a_model_in_train_mode(tiny):
    with pytest.raises(ValueError, match="eval"):
        E.export_program(build_model("tiny", clip_pretrained=None))


# ----------------------------------------------------------------------------- ONNX

def test_onnx_runtime_matches_eager_at_two_batch_sizes(tiny, program, tmp_path):
    _onnx_stack()
    import onnx
    import onnxruntime as ort

    path = str(tmp_path / "tiny.onnx")
    E.export_onnx(tiny, path, program=program, metadata=E.export_metadata(tiny, classes=[f"c{i}" for i in range(10)]))
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert not [n for n in model.graph.node if n.domain.startswith("tdsk")]
    inputs = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    outputs = [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    t, m, size = tiny.num_segments, tiny.num_local, tiny.encoder.image_size
    assert inputs == [("video", ["batch", t, m, 3, size, size])]
    assert outputs == [("logits", ["batch", tiny.num_classes])]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["tdsk"])
    assert meta["inputs"]["video"]["shape"] == ["batch", t, m, 3, size, size]
    assert meta["classes"][:2] == ["c0", "c1"] and meta["num_segments"] == t and len(meta["mean"]) == 3

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        video = _clips(tiny, batch, seed=batch)
        with torch.no_grad():
            want = tiny(video)
        (got,) = session.run(None, {"video": video.numpy()})
        err = (torch.from_numpy(got) - want).abs().max().item()
        print(f"onnxruntime vs eager, batch {batch}: max |diff| {err:.2e}")
        assert got.shape == (batch, tiny.num_classes) and err <= ONNX_ATOL


# ----------------------------------------------------------------------------- .pt2

_NO_TDSK = textwrap.dedent("""
    import sys
    sys.modules["tdsk"] = None  # any `import tdsk...` now raises ImportError
    import torch
    extra = {"tdsk.json": ""}
    program = torch.export.load(sys.argv[1], extra_files=extra)
    out = {}
    for name, video in torch.load(sys.argv[2]).items():
        out[name] = program.module()(video)
    torch.save(out, sys.argv[3])
    loaded = sorted(k for k in sys.modules if k == "tdsk" or k.startswith("tdsk."))
    assert loaded == ["tdsk"] and sys.modules["tdsk"] is None, loaded
    print("META", extra["tdsk.json"])
""")


def test_pt2_loads_and_runs_in_a_process_without_tdsk(tiny, program, tmp_path):
    path = str(tmp_path / "tiny.pt2")
    E.export_pt2(tiny, path, program=program)
    videos = {f"b{b}": _clips(tiny, b, seed=10 + b) for b in (1, 3)}
    torch.save(videos, tmp_path / "in.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _NO_TDSK, path, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    meta = json.loads(proc.stdout.split("META", 1)[1])
    assert meta["outputs"] == {"logits": {"dtype": "float32", "shape": ["batch", tiny.num_classes]}}
    out = torch.load(tmp_path / "out.pt")
    for name, video in videos.items():
        with torch.no_grad():
            want = tiny(video)
        assert out[name].shape == want.shape
        torch.testing.assert_close(out[name], want, atol=PT2_ATOL, rtol=0)


def test_multi_view_graph_averages_softmax_over_views(tiny, tmp_path):
    from tdsk.engine.evaluation import class_probabilities

    path = str(tmp_path / "views.pt2")
    E.export_pt2(tiny, path, views=2)
    video = _clips(tiny, 3, views=2)
    probs, logits = torch.export.load(path).module()(video)
    with torch.no_grad():
        want_probs, want_logits = class_probabilities(tiny, video)
    assert probs.shape == (3, tiny.num_classes) and logits.shape == (3, 2, tiny.num_classes)
    torch.testing.assert_close(probs, want_probs, atol=PT2_ATOL, rtol=0)
    torch.testing.assert_close(logits.flatten(0, 1), want_logits, atol=PT2_ATOL, rtol=0)


# ----------------------------------------------------------------------------- command line

def _cli(*args):
    return run_tool("tdsk.export", *args, timeout=600)


@pytest.fixture(scope="module")
def official_ckpt(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "official.pt"
    export_official(tiny, str(path))
    return path


def test_cli_exports_pt2_and_onnx_and_checks_them(official_ckpt, tmp_path):
    proc = _cli("--checkpoint", official_ckpt, "--cfg", "tiny", "--out", tmp_path / "m.pt2")  # format from .pt2
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "video float32[batch, 4, 5, 3, 64, 64] -> logits float32[batch, 10]" in proc.stdout
    assert "(ok," in proc.stdout
    try:
        _onnx_stack()
    except pytest.skip.Exception:
        return
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(10)))
    proc = _cli("--checkpoint", official_ckpt, "--cfg", "tiny", "--format", "onnx", "--out", tmp_path / "m.onnx",
                "--opset", "18", "--labels", labels, "--views", "1x2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-> probs float32[batch, 10], logits float32[batch, 2, 10]" in proc.stdout and "(ok," in proc.stdout
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert json.loads({p.key: p.value for p in model.metadata_props}["tdsk"])["classes"][9] == "class 9"


def test_cli_folder_format_delegates_to_save_pretrained(official_ckpt, tiny, tmp_path):
    pretrained = pytest.importorskip("tdsk.models.pretrained")
    folder = tmp_path / "folder"
    proc = _cli("--checkpoint", official_ckpt, "--cfg", "tiny", "--format", "folder", "--out", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = pretrained.from_pretrained(str(folder))
    video = _clips(tiny, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(video), tiny(video), atol=0, rtol=0)
    # a model folder is also accepted as --checkpoint
    proc = _cli("--checkpoint", folder, "--out", tmp_path / "from_folder.pt2")
    assert proc.returncode == 0 and "(ok," in proc.stdout, proc.stderr[-3000:]


def test_cli_usage_errors(official_ckpt, tmp_path):
    proc = _cli("--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "m.pt2")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = _cli("--checkpoint", official_ckpt, "--cfg", "tiny", "--out", tmp_path / "m.bin")
    assert proc.returncode == 2 and "--format" in proc.stderr
    proc = _cli("--checkpoint", official_ckpt, "--out", tmp_path / "m.pt2")  # official file without --cfg
    assert proc.returncode == 2 and "--cfg" in proc.stderr
    proc = _cli("--checkpoint", official_ckpt, "--cfg", "tiny", "--out", tmp_path / "m.pt2", "--views", "0")
    assert proc.returncode == 2


def test_parse_views_count():
    assert E.parse_views_count("1") == 1 and E.parse_views_count("3x2") == 6 and E.parse_views_count("4") == 4
    with pytest.raises(Exception):
        E.parse_views_count("ax2")


# ----------------------------------------------------------------------------- bf16 inference

# bench/bench_inference.py times tdsk under bf16 autocast, eager and torch.compile (Inductor
# with freezing); the benchmark never asserts, this test does. bf16 keeps 8 significant bits
# (relative rounding 2**-9); on the tiny model (logits ~0.4) the measured max |bf16 - fp32|
# is ~1.5e-3 eager and ~1.2e-3 compiled (on B/16 at 224, random weights: see
# bench/results/cpu-x86_64-2threads-inference.md). A regression that loses precision shows above 1e-2.
BF16_INFERENCE_ATOL = 1e-2


@pytest.mark.slow
def test_bf16_inference_eager_and_compiled_within_tolerance_of_fp32(tiny):
    video = _clips(tiny, 2)
    with torch.no_grad():
        ref = tiny(video)
        compiled = torch.compile(tiny, options={"freezing": True})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = tiny(video)
            fast = compiled(video)
    for name, out in (("eager", eager), ("compiled", fast)):
        err = (out.float() - ref).abs().max().item()
        print(f"bf16 {name} vs fp32 logits: max |diff| {err:.2e} (max |logit| {ref.abs().max():.3f})")
        assert out.dtype == torch.bfloat16 and 0 < err <= BF16_INFERENCE_ATOL
