"""DiST in tdsk: the family registry, its schema, the model against a re-statement, exact
parameter counts, its optimiser groups, mixup/cutmix, the release's schedule, and the official
checkpoint format (tiny shapes; the test against the official code is test_dist_parity.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tdsk.config import load_config
from tdsk.models import build_model, export_official, families, load_checkpoint
from tdsk.schema import ConfigError, validate_recipe

NAMES = ["left", "right", "up"]
TINY = {"variant": "dist", "arch": "tdsk-ViT-Tiny-16", "clip_pretrained": None, "num_classes": 3, "input_size": 64,
        "num_segments": 8, "temporal_dim": 16, "integration_dim": 64}


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model({**TINY, **kw}, class_names=NAMES if kw.get("classifier", "text") == "text" else None)


# ----------------------------------------------------------------------------- registry and schema

def test_families_are_registered_with_their_schema():
    assert {"tds_clip", "baseline", "dist"} <= set(families())
    with pytest.raises(ConfigError, match="model.variant='nope'"):
        build_model({**TINY, "variant": "nope"})


def test_dist_keys_are_checked_with_the_key_named():
    with pytest.raises(ConfigError, match="model.alphaa"):
        build_model({**TINY, "alphaa": 2}, class_names=NAMES)
    with pytest.raises(ConfigError, match="model.side_dim"):  # a TDS-CLIP key is not a DiST key
        build_model({**TINY, "side_dim": 64}, class_names=NAMES)
    with pytest.raises(ConfigError, match="model.num_local must be 1"):
        build_model({**TINY, "num_local": 3}, class_names=NAMES)
    with pytest.raises(ConfigError, match="multiple of model.alpha"):
        build_model({**TINY, "num_segments": 7}, class_names=NAMES)
    with pytest.raises(ConfigError, match="model.alpha must be"):
        build_model({**TINY, "alpha": "two"}, class_names=NAMES)


def test_text_classifier_without_class_names_is_a_config_error_at_build():
    with pytest.raises(ConfigError, match="model.classifier=text needs the class names"):
        build_model(TINY)
    with pytest.raises(ConfigError, match="3 class names|num_classes=4"):
        build_model({**TINY, "num_classes": 4}, class_names=NAMES)


def test_vision_only_clip_file_is_one_clear_error(tmp_path):
    from tdsk.models.clip_encoder import FrozenCLIPEncoder

    enc = FrozenCLIPEncoder("tdsk-ViT-Tiny-16", None)
    path = tmp_path / "visual_only.pt"
    torch.save({"visual." + k: v for k, v in enc.state_dict().items()}, path)
    with pytest.raises(ConfigError, match="has no CLIP text tower"):
        build_model({**TINY, "clip_pretrained": str(path)}, class_names=NAMES)


def test_recipes_validate_and_take_class_names_from_data_labels(tmp_path):
    for name in ("ssv2_dist_b16", "k400_dist_b16", "ssv2_dist_l14", "k400_dist_l14", "custom_dist_b16"):
        rc = validate_recipe(load_config(name))
        assert rc.model.variant == "dist" and rc.model.alpha == 2
        assert rc.solver.schedule == "cosine_full" and rc.solver.clip_ratio == 10.0
        assert rc.data.mixup_alpha == 0.8 and rc.data.cutmix_alpha == 1.0
    assert validate_recipe(load_config("ssv1_b16")).data.mixup_alpha == 0.0  # off for TDS-CLIP
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    model = build_model({"model": {**TINY, "num_classes": None}, "data": {"labels": str(labels)}})
    assert model.class_names == NAMES and model.num_classes == 3


# ----------------------------------------------------------------------------- counts

@pytest.mark.parametrize("name,trainable,official", [
    ("ssv2_dist_b16", 18_964_224, 19_001_184),
    ("k400_dist_b16", 26_068_224, 26_105_184),
    ("ssv2_dist_l14", 32_708_352, 32_745_312),
    ("k400_dist_l14", 39_830_784, 39_867_744),
])
def test_exact_parameter_counts(name, trainable, official):
    """``trainable``: what the optimiser sees; ``official``: every ``dist_net`` tensor of the
    official checkpoints (the last integration->temporal bridge, 384*96 + 96 = 36,960 values,
    is kept but never receives a gradient)."""
    cfg = load_config(name)
    with torch.device("meta"):
        model = build_model({**cfg["model"], "clip_pretrained": None, "classifier": "linear", "num_classes": 10})
    assert sum(p.numel() for p in model.dist_net.parameters() if p.requires_grad) == trainable
    assert sum(t.numel() for t in model.dist_net.state_dict().values()) == official
    assert not any(p.requires_grad for p in model.encoder.parameters())


# ----------------------------------------------------------------------------- re-stated reference

def _ln(x, sd, k):
    return F.layer_norm(x, x.shape[-1:], sd[k + ".weight"], sd[k + ".bias"])


def _qgelu(x):
    return x * torch.sigmoid(1.702 * x)


def _mlp(x, sd, k):
    return F.linear(_qgelu(F.linear(x, sd[k + ".c_fc.weight"], sd[k + ".c_fc.bias"])), sd[k + ".c_proj.weight"],
                    sd[k + ".c_proj.bias"])


def _conv(x, sd, k, **kw):
    return F.conv3d(x, sd[k + ".weight"], sd[k + ".bias"], **kw)


def _xattn(q, kv, sd, k):
    c = q.shape[-1]
    lq, lk = _ln(q, sd, k + ".ln_1"), _ln(kv, sd, k + ".ln_1")
    out, _ = F.multi_head_attention_forward(lq, lk, lk, c, c // 64, sd[k + ".attn.in_proj_weight"],
                                            sd[k + ".attn.in_proj_bias"], None, None, False, 0.0,
                                            sd[k + ".attn.out_proj.weight"], sd[k + ".attn.out_proj.bias"],
                                            training=False, need_weights=False)
    return out


def reference_dist(sd, video, taps, alpha, pool_layers):
    """DiST's forward written again from the paper's Fig. 2 and docs/dist.md on plain functional
    ops in the official sequence-first layout (nothing from tdsk.models)."""
    b, t = video.shape[:2]
    tp = t // alpha
    x = F.conv3d(video[:, :, 0].transpose(1, 2), sd["dist_net.temporal_stem.weight"], sd["dist_net.temporal_stem.bias"],
                 stride=(1, 16, 16), padding=(2, 0, 0))
    res, mid = 0.0, None
    for i, z in enumerate(taps):
        k = f"dist_net.temporal_nets.{i}"
        h = _ln(x.permute(0, 2, 3, 4, 1), sd, k + ".ln").permute(0, 4, 1, 2, 3)
        h = _conv(_qgelu(_conv(h, sd, k + ".temporal_net.c_fc1", padding=(1, 0, 0))), sd, k + ".temporal_net.c_fc2",
                  padding=(0, 1, 1))
        x = _qgelu(x + h)
        zz = z.unflatten(0, (b, t))[:, ::alpha].flatten(0, 1).transpose(0, 1)
        mid = F.linear(zz, sd[f"dist_net.input_linears.{i}.weight"], sd[f"dist_net.input_linears.{i}.bias"]) + res
        k = f"dist_net.integration2temporal_nets.{i}.linear_fuse"
        y = F.linear(mid[1:], sd[k + ".weight"], sd[k + ".bias"])
        n = y.shape[0]
        g = int(math.isqrt(n))
        new_x = y.view(n, b, tp, -1).permute(1, 3, 2, 0).reshape(b, -1, tp, g, g).repeat_interleave(alpha, dim=2) + x
        k = f"dist_net.temporal2integration_nets.{i}"
        f = F.conv3d(x, sd[k + ".linear_fuse.weight"], sd[k + ".linear_fuse.bias"], stride=(alpha, 1, 1))
        f = f.flatten(3).permute(3, 0, 2, 1)
        f = torch.cat([sd[k + ".cls_token"].repeat(1, b, 1, 1), f]).flatten(1, 2)
        mid = mid + f
        k = f"dist_net.integration_nets.{i}"
        L, bt, c = mid.shape
        v = _ln(mid, sd, k + ".ln_temporal").view(L, b, tp, c).permute(1, 3, 2, 0).reshape(b, c, tp, L, 1)
        v = _conv(v, sd, k + ".temporal_ffn.c_fc1")
        v = _qgelu(_conv(v, sd, k + ".temporal_ffn.c_fc2", padding=(1, 0, 0)))
        v = _conv(v, sd, k + ".temporal_ffn.c_proj").flatten(3).permute(3, 0, 2, 1).flatten(1, 2)
        res = _mlp(_ln(mid, sd, k + ".ln"), sd, k + ".ffn") + v
        x = new_x
    tokens = res + mid
    vq = sd["dist_net.aggregated_cls_token"].repeat(1, b, 1)
    fq = sd["dist_net.aggregated_spatial_cls_token"].repeat(1, b * tp, 1)
    for j in range(pool_layers):
        k = f"dist_net.adapooling_nets.{j}"
        fq = fq + _xattn(fq, tokens, sd, k + ".spatial_transformer")
        fq = fq + _mlp(_ln(fq, sd, k + ".ln_out_spat_cls_token"), sd, k + ".output_map_spatial_cls_token")
        fr = (fq[0].reshape(b, tp, -1) + sd[k + ".positional_embedding"]).permute(1, 0, 2)
        vq = vq + _xattn(vq, fr, sd, k + ".temporal_transformer")
        vq = vq + _mlp(_ln(vq, sd, k + ".ln_out_temp_cls_token"), sd, k + ".output_map_cls_token")
    cls = taps[-1].unflatten(0, (b, t))[:, ::alpha, 0].mean(1)
    e = _ln(vq[0] + F.linear(cls, sd["dist_net.proj_spatial_cls_token.weight"], sd["dist_net.proj_spatial_cls_token.bias"]),
            sd, "dist_net.ln_post") @ sd["dist_net.proj"]
    e = e / e.norm(dim=1, keepdim=True)
    text = sd["text_embeddings"] / sd["text_embeddings"].norm(dim=1, keepdim=True)
    return sd["logit_scale"].exp() * e @ text.t()


def test_logits_match_a_restated_reference():
    model = _tiny().eval()
    with torch.no_grad():  # non-trivial values everywhere (the init zeroes biases)
        g = torch.Generator().manual_seed(3)
        for p in model.dist_net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    video = torch.randn(2, 8, 1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        taps = model.frame_taps(video[:, :, 0].flatten(0, 1))
        want = reference_dist(model.state_dict(), video, taps, model.alpha, 2)
        got = model(video)
        split = model.forward_from_taps(video, taps)  # the timeline's path: taps of every frame
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, got, rtol=0, atol=0)


def test_only_dist_net_trains_and_every_trainable_tensor_gets_a_gradient():
    model = _tiny()
    model(torch.randn(2, 8, 1, 3, 64, 64)).sum().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("dist_net.") for n in names)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert "dist_net.integration2temporal_nets.1.linear_fuse.weight" in dict(model.named_buffers())


def test_linear_classifier_option():
    model = _tiny(classifier="linear")
    assert model.head is not None and not hasattr(model, "text_embeddings")
    assert model(torch.randn(1, 8, 1, 3, 64, 64)).shape == (1, 3)


# ----------------------------------------------------------------------------- optimiser, schedule, mixup

def test_param_groups_lr_x10_and_no_decay_on_tokens_embeddings_biases():
    from tdsk.engine.optim import build_optimizer
    from tdsk.models.registry import param_groups_of

    model = _tiny()
    solver = {"lr": 3.2e-5, "weight_decay": 1e-4, "clip_ratio": 10.0, "optimizer": "adamw"}
    groups = {g["name"]: g for g in param_groups_of(model, solver)}
    assert set(groups) == {"decay", "no_decay"}
    ids = {id(p): n for n, p in model.named_parameters()}
    no_decay = {ids[id(p)] for p in groups["no_decay"]["params"]}
    assert "dist_net.aggregated_cls_token" in no_decay and "dist_net.adapooling_nets.0.positional_embedding" in no_decay
    assert "dist_net.temporal2integration_nets.0.cls_token" in no_decay
    assert "dist_net.input_linears.0.bias" in no_decay and "dist_net.ln_post.weight" in no_decay
    assert all(p.ndim > 1 for p in groups["decay"]["params"])
    opt = build_optimizer(model, solver, groups=param_groups_of(model, solver))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3.2e-4, 3.2e-4])
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"decay": 1e-4, "no_decay": 0.0}


def test_cosine_full_schedule_is_the_releases():
    from tdsk.engine.optim import WarmupCosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosine(opt, 1.0, 36, 6, 0.0, 1, "cosine_full")
    at6 = 0.5 * (1 + math.cos(math.pi * 6 / 36))
    assert s.lr_at(3) == pytest.approx(at6 / 2)
    assert s.lr_at(6) == pytest.approx(at6)
    assert s.lr_at(18) == pytest.approx(0.5)
    assert s.lr_at(36) == pytest.approx(0.0, abs=1e-12)


def test_mixup_cutmix_soft_targets_are_reproducible():
    from tdsk.data.mixup import MixupCutmix

    video = torch.randn(4, 8, 1, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 1])
    mix = MixupCutmix(3, mixup_alpha=0.8, cutmix_alpha=1.0, seed=5)
    seen = set()
    for it in range(12):
        v, y = mix(video, labels, epoch=1, iteration=it)
        v2, y2 = mix(video, labels, epoch=1, iteration=it)  # a resumed run mixes the same way
        assert torch.equal(v, v2) and torch.equal(y, y2)
        assert y.shape == (4, 3) and torch.allclose(y.sum(1), torch.ones(4))
        lam = float(y[0, 0])  # clip 0 is class 0 mixed with clip 3 (class 1)
        changed = (v != video).any(dim=(1, 2, 3))
        cut = bool((v == video).any() and changed.any())  # cutmix keeps pixels outside the box
        if cut:  # the box's share: 1 - lam of every frame of the mixed clips
            diff = (v[0] != video[0]).any(dim=(0, 1, 2)).float().mean()
            assert float(diff) == pytest.approx(1 - lam, abs=1e-6)
            seen.add("cutmix")
        elif lam < 1:
            torch.testing.assert_close(v[0], lam * video[0] + (1 - lam) * video[3])
            seen.add("mixup")
    assert seen == {"mixup", "cutmix"}
    off = MixupCutmix(3, mixup_alpha=0.8, prob=0.0)
    v, y = off(video, labels, 0, 0)
    assert torch.equal(v, video) and torch.equal(y, F.one_hot(labels, 3).float())
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    logits = torch.randn(4, 3)
    v, y = mix(video, labels, 0, 0)  # mixed-then-smoothed = smoothed-then-mixed (timm's Mixup)
    smooth = lambda t: F.one_hot(t, 3).float() * 0.9 + 0.1 / 3  # noqa: E731
    lam = float(y[0, 0])
    want = -(F.log_softmax(logits, -1) * (lam * smooth(labels) + (1 - lam) * smooth(labels.flip(0)))).sum(1).mean()
    torch.testing.assert_close(loss(logits, y), want)


# ----------------------------------------------------------------------------- official format

def test_official_round_trip_with_a_tiny_clip_file(tmp_path):
    import open_clip

    from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS
    from tdsk.models.text_tower import TINY_TEXT_CFG

    torch.manual_seed(1)
    cfg = TDSK_VIT_CONFIGS["tdsk-ViT-Tiny-16"]
    clip = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], TINY_TEXT_CFG, quick_gelu=True)
    clip_file = tmp_path / "tiny_clip.pt"
    torch.save(clip.state_dict(), clip_file)
    a = _tiny(clip_pretrained=str(clip_file)).eval()
    assert not torch.equal(a.text_embeddings, torch.zeros_like(a.text_embeddings))
    with torch.no_grad():
        for p in a.dist_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "official.pyth"
    export_official(a, str(path))
    sd = torch.load(path, weights_only=True)["model_state"]
    assert "backbone.base_encoder.dist_net.proj" in sd and "backbone.base_encoder.token_embedding.weight" in sd
    torch.testing.assert_close(sd["backbone.base_encoder.visual.proj"], clip.visual.proj.detach())
    b = _tiny().eval()  # random CLIP: everything comes from the file
    assert load_checkpoint(b, str(path)).format == "official"
    video = torch.randn(1, 8, 1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(video), a(video), rtol=0, atol=0)
    linear = _tiny(classifier="linear")
    with pytest.raises(ValueError, match="official DiST format classifies with CLIP text"):
        export_official(linear, str(tmp_path / "x.pyth"))
    del sd["backbone.base_encoder.dist_net.proj"]
    torch.save({"model_state": sd}, tmp_path / "broken.pyth")
    with pytest.raises(ValueError, match="missing from the file.*dist_net.proj"):
        load_checkpoint(b, str(tmp_path / "broken.pyth"))
