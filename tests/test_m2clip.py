"""M2-CLIP units (tdsk.models.m2clip*, docs/m2clip.md): zero-initialised adapters, the local
temporal difference, shapes, the loss, optimiser groups, trainable counts (meta device),
use_classes, config errors, the official checkpoint format."""
import pytest
import torch
import torch.nn.functional as F

from tdsk.models import build_model
from tdsk.models.m2clip_adapters import TEDAdapter
from tdsk.ops.local_temporal_diff import local_temporal_diff as _local_temporal_diff
from tdsk.models.registry import loss_of, param_groups_of
from tdsk.schema import ConfigError

NAMES = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny_m2clip", class_names=NAMES)


def _video(b=2, t=4, s=64):
    return torch.randn(b, t, 1, 3, s, s, generator=torch.Generator().manual_seed(3))


def test_local_temporal_diff_semantics_any_strides():
    x = torch.randn(2, 5, 3, 4).transpose(2, 3)  # non-contiguous
    d = _local_temporal_diff(x)
    assert d.shape == x.shape and torch.all(d[:, 0] == 0)
    torch.testing.assert_close(d[:, 1:], x[:, 1:] - x[:, :-1])


def test_ted_adapter_identity_at_init_and_cls_gets_no_difference():
    ad = TEDAdapter(16, 8, num_frames=3)
    x = torch.randn(6, 5, 16)
    assert torch.equal(ad(x), x)
    with torch.no_grad():
        for p in ad.parameters():
            p.normal_()
        ad.te.fc2.weight.zero_()  # only the LTD term left: the class token stays
        ad.te.fc2.bias.zero_()
    y = ad(x)
    assert torch.equal(y[:, 0], x[:, 0]) and not torch.allclose(y[:, 1:], x[:, 1:])


def test_zero_init_visual_adapters_leave_clip_unchanged(model):
    model.eval()
    v = _video()
    with torch.no_grad():
        emb, frames, _ = model.encode_video(v)
        plain = model.visual.head(model.visual(v[:, :, 0].flatten(0, 1))[:, 0]).view(2, 4, -1)
    torch.testing.assert_close(frames, plain)
    torch.testing.assert_close(emb, plain.mean(1))


def test_shapes_contract_and_eval_logits(model):
    model.eval()
    v = _video()
    logits = model(v)
    assert logits.shape == (2, 10) and model.open_vocabulary and model.feature_dim == 64
    feats = model.features(v)
    torch.testing.assert_close(model.classify(feats), logits)
    other = model.text_embeddings_for(["dog", "cat", "bird"])
    assert other.shape == (3, 64) and model.classify(feats, other).shape == (2, 3)
    a, cam_logits = model.cam_activations(v)
    assert a.shape == (2, 4, 16, 64)
    torch.testing.assert_close(cam_logits.detach(), logits, rtol=1e-4, atol=1e-4)
    assert torch.autograd.grad(cam_logits[:, 0].sum(), a)[0].abs().sum() > 0


def test_loss_matches_the_release_formula_and_trains_every_adapter(model):
    model.train()
    model.zero_grad()
    labels = torch.tensor([2, 2])
    out = model(_video())
    loss = loss_of(model, out, labels, torch.nn.CrossEntropyLoss())
    v, t = F.normalize(out["video"], dim=-1), F.normalize(out["text"], dim=-1)
    pair = out["logit_scale"].exp() * v @ t[labels].t()
    gt = F.softmax(torch.ones(2, 2) * 10, 1)
    kl = lambda p: (gt * (gt.log() - F.log_softmax(p, 1))).sum() / 2  # noqa: E731
    sim = (100 * v @ t.t()).softmax(-1)
    want = ((kl(pair) + kl(pair.t())) / 2 + F.cross_entropy(sim, labels)) / 2 + F.cross_entropy(out["fc_logits"], labels)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.visual.parameters()) and all(p.grad is None for p in model.text.parameters())
    model.eval()


def test_param_groups_text_adapters_at_half_lr(model):
    groups = {g["name"]: g for g in param_groups_of(model, {"lr": 1e-3, "weight_decay": 0.01})}
    assert groups["text_decay"]["lr"] == 5e-4 and groups["text_no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 1e-3 and groups["decay"]["weight_decay"] == 0.01
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


# the release trains every "*adapter*" parameter of its CLIP: K400 12x384 16,138,136 and SSv2 24x384
# 39,524,248 (400 / 174 classes), of which its MLM head (520 / 234 words) and the decoder block's
# text adapters never train (docs/m2clip.md); tdsk builds neither without model.mlm
@pytest.mark.parametrize("recipe,classes,want", [("k400_m2clip_b16", 400, 16_138_136 - 530_440 - 394_112),
                                                  ("ssv2_m2clip_b16", 174, 39_524_248 - 383_722 - 788_224)])
def test_trainable_counts_b16_on_meta(recipe, classes, want):
    with torch.device("meta"):
        m = build_model(recipe, class_names=[f"c{i}" for i in range(classes)], clip_pretrained=None)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == want


def test_use_classes_and_errors(model):
    m = build_model("tiny_m2clip", class_names=NAMES, eval_logits="fc")
    m.eval()
    m.use_classes(["a", "b", "c"])
    assert m.num_classes == 3 and m.config["num_classes"] == 3 and m.class_names == ["a", "b", "c"]
    assert m.config["eval_logits"] == "similarity" and m(_video()).shape == (2, 3)
    with pytest.raises(ConfigError, match="class names"):
        build_model("tiny_m2clip")
    for key, value in (("eval_logits", "both"), ("text_prompt", "no slot"), ("num_local", 3), ("mlm_rate", 0.0),
                       ("head_dropout", 1.0)):
        with pytest.raises(ConfigError, match=f"model.{key}"):
            build_model("tiny_m2clip", class_names=NAMES, **{key: value})
    with pytest.raises(ValueError, match="logits tensor"):
        loss_of(model, torch.zeros(2, 10), torch.tensor([0, 1]), torch.nn.CrossEntropyLoss())


def test_mlm_branch_trains_decoder_adapters_and_head():
    m = build_model("tiny_m2clip", class_names=NAMES, mlm=True)
    m.train()
    loss = loss_of(m, m(_video()), torch.tensor([1, 3]), torch.nn.CrossEntropyLoss())
    loss.backward()
    assert m.decoder.pre_mlp.fc1.weight.grad is not None and m.mlm_head.decoder.weight.grad is not None
    assert all(p.grad is None for p in m.decoder.block.parameters())


def test_official_export_load_round_trip(model, tmp_path):
    from tdsk.models import export_official, load_checkpoint

    export_official(model, str(tmp_path / "o.pth"), epoch=0)
    sd = torch.load(tmp_path / "o.pth", weights_only=True)["model"]
    assert "visual.t_adapter.fc1.weight" in sd and "visual.adapter_fc.weight" in sd
    assert "visual.transformer.resblocks.0.adapter_pre_mlp.offset_adapter.conv.weight" in sd
    other = build_model("tiny_m2clip", class_names=NAMES)
    assert load_checkpoint(other, str(tmp_path / "o.pth")).format == "official"
    for (k, a), b in zip(model.named_parameters(), other.parameters()):
        assert not a.requires_grad or torch.equal(a, b), k  # the trained tensors (the frozen CLIP: its weights)
    sd.pop("visual.t_adapter.fc1.weight")
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(other, str(tmp_path / "bad.pth"))


def _reload(m, folder, **kw):
    from tdsk.models import from_pretrained, save_pretrained

    save_pretrained(m, str(folder), **kw)
    return from_pretrained(str(folder))


def test_folder_of_a_switched_model_reloads_with_its_trained_head(tmp_path):
    m = build_model("tiny_m2clip", class_names=NAMES).eval()
    m.use_classes(["dog", "cat", "bird"])
    m2 = _reload(m, tmp_path / "f", labels=["dog", "cat", "bird"])
    assert m2.num_classes == 3 and m2.class_names == ["dog", "cat", "bird"] and m2.linear_head.out_features == 10
    assert m2.trained_class_names == NAMES
    v = _video()
    with torch.no_grad():
        torch.testing.assert_close(m2(v), m(v))


def test_folder_with_fc_logits_keeps_them(tmp_path):
    m = build_model("tiny_m2clip", class_names=NAMES, eval_logits="fc").eval()
    m2 = _reload(m, tmp_path / "f", labels=NAMES)
    assert m2.config["eval_logits"] == "fc" and m2.trained_class_names == NAMES
    v = _video()
    with torch.no_grad():
        torch.testing.assert_close(m2(v), m.encode_video(v)[2])


def test_placeholder_build_then_use_classes_sets_the_trained_names():
    from tdsk.models.text_tower import placeholder_text_embeddings

    with placeholder_text_embeddings():
        m = build_model("tiny_m2clip", num_classes=10, eval_logits="fc")
    assert m.class_names is None and m.trained_class_names is None
    m.use_classes(NAMES)
    assert m.trained_class_names == NAMES and m.config["eval_logits"] == "fc"


def test_folder_without_labels_keeps_the_names_and_nameless_model_refuses(tmp_path):
    from tdsk.models.text_tower import placeholder_text_embeddings

    m = build_model("tiny_m2clip", class_names=NAMES).eval()
    m2 = _reload(m, tmp_path / "f")  # no labels= : the model's own names are stored
    assert (tmp_path / "f" / "labels.txt").read_text().splitlines() == NAMES and m2.class_names == NAMES
    with placeholder_text_embeddings():
        blank = build_model("tiny_m2clip", num_classes=10).eval()
    with pytest.raises(ValueError, match="no class names.*use_classes"), torch.no_grad():
        blank(_video())


def test_mlm_model_folder_reloads(tmp_path):
    m = build_model("tiny_m2clip", class_names=NAMES, mlm=True).eval()
    m2 = _reload(m, tmp_path / "f", labels=NAMES)
    assert m2.mlm_vocab == m.mlm_vocab
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_mlm_is_refused_in_distributed_training(monkeypatch):
    import torch.distributed as dist

    m = build_model("tiny_m2clip", class_names=NAMES, mlm=True).train()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    with pytest.raises(ConfigError, match="model.mlm=true.*distributed"):
        m(_video())


def test_text_embeddings_for_is_cached_until_the_weights_change(model):
    model.eval()
    a = model.text_embeddings_for(["dog", "cat"])
    assert model.text_embeddings_for(["dog", "cat"]) is a
    with torch.no_grad():
        next(iter(model.text_adapters.parameters())).add_(0.0)  # a new weights version
    assert model.text_embeddings_for(["dog", "cat"]) is not a
