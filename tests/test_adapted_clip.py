"""The adapter machinery of the in-tower families (tdsk.models.adapted_clip, docs/adapters.md)."""
import open_clip
import pytest
import torch
import torch.nn as nn

from tdsk.models.adapted_clip import (AdaptedTextTower, AdaptedVisionTower, ClassTextCache)
from tdsk.models.clip_encoder import FrozenCLIPEncoder

ARCH = "tdsk-ViT-Tiny-16"


@pytest.fixture(scope="module")
def vision():
    torch.manual_seed(0)
    return AdaptedVisionTower(ARCH, None)


def test_vision_without_adapters_equals_the_frozen_tower(vision):
    frozen = FrozenCLIPEncoder(ARCH, None, keep_head=True)
    frozen.load_state_dict(vision.state_dict())
    x = torch.randn(3, 3, 64, 64)
    out = vision(x)
    torch.testing.assert_close(out, frozen(x)[-1], rtol=0, atol=0)
    torch.testing.assert_close(vision.head(out[:, 0]), frozen.image_features(x), rtol=0, atol=0)


def test_gradients_reach_adapters_through_frozen_blocks_and_not_the_tower(vision):
    pre, post = nn.Linear(64, 64), nn.Linear(64, 64)
    slots = [{"pre_mlp": lambda t: t + pre(t)}, {"post_mlp": lambda t: t + post(t)}]
    x = torch.randn(2, 3, 64, 64)
    vision(x, slots)[:, 0].sum().backward()
    # the first block's adapter gets its gradient through the second (frozen) block
    assert pre.weight.grad is not None and pre.weight.grad.abs().sum() > 0
    assert post.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vision.parameters())


def test_checkpointing_gives_the_same_values_and_gradients(vision):
    torch.manual_seed(1)
    a = nn.Linear(64, 64)
    slots = [{"pre_attn": lambda t: t + a(t)}, {}]
    x = torch.randn(2, 3, 64, 64)
    out = vision(x, slots)
    out.square().mean().backward()
    g = a.weight.grad.clone()
    a.zero_grad()
    vision.checkpoint = True
    try:
        out2 = vision(x, slots)
        out2.square().mean().backward()
    finally:
        vision.checkpoint = False
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(a.weight.grad, g)


def test_slot_errors(vision):
    with pytest.raises(ValueError, match="unknown adapter slot"):
        vision(torch.randn(1, 3, 64, 64), [{"after_attn": lambda t: t}, {}])
    with pytest.raises(ValueError, match="slots for 1 blocks"):
        vision(torch.randn(1, 3, 64, 64), [{}])


def test_text_tower_equals_open_clip_and_adapters_change_it():
    torch.manual_seed(0)
    text = AdaptedTextTower(ARCH, None)
    tokens = open_clip.tokenize(["a video of a cat", "dog"], context_length=text.context_length)
    feats, last = text(tokens)
    torch.testing.assert_close(feats, text.tower(tokens), rtol=0, atol=0)
    assert last.shape == (2, text.context_length, text.width)
    ad = nn.Linear(text.width, text.width)
    feats2, _ = text(tokens, [{"pre_mlp": lambda t: t + ad(t)}])
    assert (feats2 - feats).abs().max() > 1e-4
    # causal: the end-of-text embedding of "dog" does not depend on tokens after it
    longer = tokens.clone()
    longer[1, 5] = 1234
    torch.testing.assert_close(text(longer)[0][1], feats[1])
    assert not any(p.requires_grad for p in text.parameters())
    text.train()
    assert not text.training


def test_class_text_cache_recomputes_when_names_or_weights_change():
    p = nn.Parameter(torch.ones(2))
    calls = []

    def compute():
        calls.append(1)
        return p * 2

    cache = ClassTextCache()
    with torch.no_grad():
        a = cache.get(("x",), [p], compute)
        b = cache.get(("x",), [p], compute)
        assert len(calls) == 1 and a is b
        cache.get(("y",), [p], compute)
        assert len(calls) == 2
        p.add_(1)  # an optimiser step bumps the version
        c = cache.get(("x",), [p], compute)
    assert len(calls) == 3 and torch.equal(c, torch.full((2,), 4.0))
    # with autograd on and trainable weights: always recomputed, with a graph
    d = cache.get(("x",), [p], compute)
    assert len(calls) == 4 and d.requires_grad


def test_class_text_cache_keys_on_dtype_and_autocast():
    """Embeddings computed under bf16 autocast or with bf16 weights are not served to fp32 use."""
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    cache = ClassTextCache()
    with torch.no_grad():
        a = cache.get("k", [lin.weight], lambda: lin(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = cache.get("k", [lin.weight], lambda: lin(x))
        assert b.dtype == torch.bfloat16 and a.dtype == torch.float32
        c = cache.get("k", [lin.weight], lambda: lin(x))
        assert c.dtype == torch.float32
        lin.to(torch.float64)
        d = cache.get("k", [lin.weight], lambda: lin(x.double()))
    assert d.dtype == torch.float64
