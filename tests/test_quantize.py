"""Int8 CPU inference (tdsk.models.quantize): every linear layer, the frozen tower's fused
q/k/v projection included, runs int8; logits stay close to fp32; the input model is untouched."""
import pytest
import torch
import torch.nn as nn

from tdsk.models import build_model
from tdsk.models.quantize import int8_available, quantize_int8

pytestmark = pytest.mark.skipif(not int8_available(), reason="no quantized CPU engine in this PyTorch build")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", clip_pretrained=None).eval()
    s = model.encoder.image_size
    video = torch.randn(3, model.num_segments, model.num_local, 3, s, s, generator=torch.Generator().manual_seed(1))
    return model, video


def _quantised(module):
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)


def test_every_linear_layer_is_quantised(tiny):
    model, _ = tiny
    q = quantize_int8(model)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    attns = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert attns > 0
    # each nn.Linear, plus one in_proj per attention module
    assert sum(_quantised(m) for m in q.modules()) == linears + attns
    for m in q.modules():
        if isinstance(m, nn.MultiheadAttention):
            assert _quantised(m.in_proj) and _quantised(m.out_proj)


def test_int8_logits_close_to_fp32_and_input_model_untouched(tiny):
    model, video = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(video)
        out = quantize_int8(model)(video)
        again = model(video)
    assert torch.equal(ref, again)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "in_proj") for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.05, rel  # int8 differs from fp32, but little
    p, q = ref.softmax(-1), out.softmax(-1)
    assert float((p - q).abs().max()) < 0.01


def test_the_quantised_in_proj_is_what_runs(tiny):
    """The tower's forward must use the quantised q/k/v module, not the float parameter."""
    model, video = tiny
    q = quantize_int8(model)
    with torch.no_grad():
        out = q(video)
        for m in q.modules():
            if isinstance(m, nn.MultiheadAttention):
                del m.in_proj
        float_qkv = q(video)
    assert not torch.equal(out, float_qkv)
