"""One precision rule (tdsk.engine.precision) for the trainer and inference."""
import pytest
import torch

import tdsk
import tdsk.engine.trainer as trainer
import tdsk.inference as inference
from tdsk.engine import precision as P
from tdsk.models import build_model
from tdsk.models.quantize import int8_available
from tdsk.schema import ConfigError


def test_trainer_and_inference_share_one_rule():
    assert trainer.resolve_precision is P.resolve_precision
    assert inference.resolve_precision is P.resolve_precision
    assert trainer.autocast_for is P.autocast_for is inference.autocast_for


@pytest.mark.parametrize("inference_rule", [False, True])
def test_gpu_without_bf16_gets_fp16_in_training_and_inference(monkeypatch, inference_rule):
    """Before: inference resolved fp32 on such a GPU (V100, T4) while training took fp16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", torch.device("cuda"), inference=inference_rule)[0] == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", torch.device("cuda"), inference=inference_rule)[0] == "bf16"


def test_cpu_rule(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: (True, "AMX"))
    assert P.resolve_precision("auto", "cpu", inference=True) == ("bf16", "auto: the CPU has AMX")
    assert P.resolve_precision("auto", "cpu")[0] == "fp32"  # training on a CPU: fp32
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: (False, "no AMX or AVX512-BF16"))
    assert P.resolve_precision("auto", "cpu", inference=True)[0] == ("int8" if int8_available() else "fp32")


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"train\.precision='int8'.*inference only"):
        P.resolve_precision("int8", "cpu", key="train.precision")
    with pytest.raises(ValueError, match=r"precision='fp8'"):
        P.resolve_precision("fp8", "cpu", inference=True)
    with pytest.raises(ValueError, match="CPU only"):
        P.resolve_precision("int8", torch.device("cuda"), inference=True)
    assert P.resolve_precision("bfloat16", "cpu") == ("bf16", "requested")
    assert P.resolve_precision("amp", "cpu")[0] == "fp16"


def test_a_recipe_with_a_bad_precision_is_a_config_error():
    from tdsk.config import apply_overrides, load_config
    from tdsk.schema import validate_recipe

    for value in ("int8", "fp8"):
        with pytest.raises(ConfigError, match=r"train\.precision"):
            validate_recipe(apply_overrides(load_config("demo"), [f"train.precision={value}"]))


@pytest.mark.skipif(not int8_available(), reason="no quantized CPU engine in this PyTorch build")
def test_recognizer_int8():
    torch.manual_seed(0)
    model = build_model("tiny", clip_pretrained=None).eval()
    s = model.encoder.image_size
    cfg = {"model": dict(model.config), "data": {"input_size": s, "num_segments": model.num_segments,
                                                  "num_local": model.num_local}}
    video = torch.randn(2, model.num_segments, model.num_local, 3, s, s)
    fp32 = tdsk.Recognizer(model, cfg, device="cpu", precision="fp32")
    int8 = tdsk.Recognizer(model, cfg, device="cpu", precision="int8")
    assert int8.precision == "int8" and int8.model is model and int8.runtime_model is not model
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.runtime_model.modules())
    a, b = fp32.logits(video), int8.logits(video)
    assert not torch.equal(a, b)
    assert float((a - b).abs().max() / a.abs().max()) < 0.05


def test_a_cpu_running_below_avx512_has_no_fast_bf16(monkeypatch):
    """ATen limited to AVX2 (the CPU, or ATEN_CPU_CAPABILITY=avx2) emulates bf16: slower than fp32."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    ok, why = P.cpu_bf16_support()
    assert not ok and "AVX2" in why
