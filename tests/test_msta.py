"""MSTA (Chen et al., CVPR 2025; docs/msta.md): the shared-projection adapters, the
description-guided consistency term, the descriptions file, the text-classifier contract,
the counts of the B/16 recipe, and every tool end to end on the demo recipe."""
import json
import logging
import os

import pytest
import torch
from helpers import fast_overrides

import tdsk
from tdsk import demo
from tdsk.config import load_config
from tdsk.models import build_model
from tdsk.models.msta import consistency_loss, msta_loss, read_descriptions
from tdsk.models.text_tower import placeholder_text_embeddings
from tdsk.schema import ConfigError

NAMES = [f"class {i}" for i in range(10)]


def _descriptions(path, names, per_class=2):
    """A tiny generated description file in the published layout ``{class: [sentence, ...]}``."""
    path.write_text(json.dumps({n: [f"A video about {n}, take {j}." for j in range(per_class)] for n in names}))
    return str(path)


def _tiny(**kw):
    torch.manual_seed(0)
    names = kw.pop("class_names", NAMES)
    return build_model("tiny_msta", class_names=names, num_classes=len(names), **kw)


def _video(b=2, seed=1):
    return torch.randn(b, 8, 1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the adapters

def test_adapters_change_clip_as_the_scale_implies():
    """MMA initialises the adapters with Kaiming weights (not zero): at init the adapted tower
    differs from the frozen CLIP by a branch proportional to adapter_scale."""
    m = _tiny().eval()
    frames = _video()[:, :, 0].flatten(0, 1)
    with torch.no_grad():
        plain = m.encoder.head(m.encoder(frames)[:, 0])
        d1 = m.frame_embeddings(frames) - plain
        m.scale *= 2
        d2 = m.frame_embeddings(frames) - plain
    assert 0 < d1.norm() < 0.05 * plain.norm()
    assert d2.norm() / d1.norm() == pytest.approx(2.0, rel=0.05)


def test_shared_projection_is_trained_by_both_towers():
    m = _tiny().train()
    shared = m.adapters.shared[0][0].weight
    m.features(_video()).square().sum().backward()          # the visual branch alone
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert m.adapters.text_down[0][0].weight.grad is None
    m.zero_grad(set_to_none=True)
    m.text_embeddings_for(NAMES).square().sum().backward()  # the text branch alone
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert m.adapters.visual_down[0][0].weight.grad is None
    assert sum(1 for mod in m.modules() if mod is m.adapters.shared[0]) == 1


def test_gradient_is_rescaled_as_in_mma_and_checkpointing_keeps_it():
    """The adapter weights' gradient is 1/scale times the true one (MMA's gradient scale layer);
    activation checkpointing gives the same gradients."""
    names = NAMES[:3]
    grads = {}
    for ckpt in (False, True):
        m = _tiny(checkpoint=ckpt, class_names=names).train()
        m(_video()).logsumexp(-1).sum().backward()
        grads[ckpt] = [p.grad.clone() for p in m.adapters.parameters()]
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the true gradient of the up projection's bias is the sum of the scaled output gradient
    m = _tiny(class_names=names, adapter_scale=1e-4).train()   # small: the first-order regime
    up = m.adapters.visual_up[0][0].bias
    m(_video()).logsumexp(-1).sum().backward()
    true = up.grad * m.scale
    m2 = _tiny(class_names=names, adapter_scale=1e-4).train()
    m2.load_state_dict(m.state_dict())
    m2.scale = 2 * m.scale
    m2(_video()).logsumexp(-1).sum().backward()
    # rescaled: the weights see (nearly) the same gradient at scale s and 2s, the true gradient
    # (grad x scale) doubles; without the rescaling it would grow 4-fold in this product
    got = m2.adapters.visual_up[0][0].bias.grad
    torch.testing.assert_close(got, up.grad, rtol=0.01, atol=1e-6)
    torch.testing.assert_close(got * m2.scale, 2 * true, rtol=0.01, atol=1e-9)


def test_text_prefix_cache_and_truncated_context_match_the_full_tower():
    """The adapted text branch cuts the context after the last end-of-text token and caches the
    blocks before the first adapted one: the same embeddings as the full 77-token tower."""
    from tdsk.models.adapted_clip import tokenize
    from tdsk.models.clip_encoder import TDSK_VIT_CONFIGS
    from tdsk.models.text_tower import TINY_TEXT_CFG

    TDSK_VIT_CONFIGS.setdefault("tdsk-test-msta-2x2", {**TDSK_VIT_CONFIGS["tdsk-ViT-Tiny-16"],
                                                      "text_cfg": {**TINY_TEXT_CFG, "layers": 2}})
    m = _tiny(arch="tdsk-test-msta-2x2", text_adapter_layers=[2])  # one text block before the adapted one

    with torch.no_grad():
        got = m.text_embeddings_for(NAMES[:4])
        tokens = tokenize([m.config["text_prompt"].format(n) for n in NAMES[:4]], m.text.context_length)
        want, _ = m.text(tokens, m._slots("text", m.text.blocks, m.text_layers))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- consistency

def test_consistency_loss_on_a_hand_made_case():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    desc = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert float(consistency_loss(text, desc)) == pytest.approx((0.0 + 1.0 + 2.0) / 3)
    logits = torch.tensor([[2.0, 0.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    out = msta_loss({"logits": logits, "consistency_loss": torch.tensor(0.25)}, torch.tensor([0]),
                    torch.nn.CrossEntropyLoss())
    assert float(out) == pytest.approx(float(ce) + 0.25)
    assert float(msta_loss(logits, torch.tensor([0]), torch.nn.CrossEntropyLoss())) == pytest.approx(float(ce))


def test_description_embeddings_and_the_training_output(tmp_path):
    path = _descriptions(tmp_path / "d.json", NAMES, per_class=3)
    m = _tiny(descriptions=path, consistency_weight=0.5)
    sentences = read_descriptions(path, NAMES, 2)
    with torch.no_grad():
        e = torch.nn.functional.normalize(m.text.encode(sentences[3]), dim=-1).mean(0)
    torch.testing.assert_close(m.description_embeddings[3], e / e.norm(), rtol=1e-5, atol=1e-6)
    assert "description_embeddings" in m.state_dict()
    out = m.train()(_video())
    text = m.text_embeddings_for(NAMES)
    assert set(out) == {"logits", "consistency_loss"}
    assert float(out["consistency_loss"].detach()) == pytest.approx(0.5 * float(consistency_loss(text, m.description_embeddings).detach()),
                                                           rel=1e-5)
    with torch.no_grad():
        assert torch.is_tensor(m.eval()(_video()))  # evaluation: logits only


def test_descriptions_file_errors(tmp_path, caplog):
    names = ["run", "jump", "swim"]
    with pytest.raises(ConfigError, match="model.descriptions: no such file"):
        read_descriptions(str(tmp_path / "nope.json"), names, 2)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="model.descriptions=.*not a readable JSON"):
        read_descriptions(str(bad), names, 2)
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"run": ["a", "b"]}))
    with pytest.raises(ConfigError, match=r"no sentences for 2 of 3 classes: 'jump', 'swim'"):
        read_descriptions(str(part), names, 2)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({n: [1, 2] for n in names}))
    with pytest.raises(ConfigError, match="list of non-empty sentences"):
        read_descriptions(str(wrong), names, 2)
    # the published layout keys the classes by index; a class with fewer sentences uses what there is
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"0": ["a", "b", "c"], "1": ["d"], "2": ["e", "f"]}))
    with caplog.at_level(logging.WARNING, logger="tdsk"):
        got = read_descriptions(str(index), names, 2)
    assert got == [["a", "b"], ["d"], ["e", "f"]]
    with pytest.raises(ConfigError, match="model.descriptions"):
        _tiny(descriptions=str(part), class_names=names)


@pytest.mark.parametrize("override, key", [
    ({"adapter_layers": [3]}, "model.adapter_layers"),
    ({"adapter_layers": "1-2"}, "model.adapter_layers"),     # 2 visual blocks, 1 text block
    ({"text_adapter_layers": [2]}, "model.text_adapter_layers"),
    ({"adapter_scale": 0.0}, "model.adapter_scale"),
    ({"num_local": 3}, "model.num_local"),
    ({"text_prompt": "a video"}, "model.text_prompt"),
    ({"consistency_weight": -1.0}, "model.consistency_weight"),
])
def test_bad_config_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _tiny(**override)


def test_class_names_are_required():
    with pytest.raises(ConfigError, match="class names"):
        build_model("tiny_msta")


# ----------------------------------------------------------------------------- the classifier contract

def test_text_classifier_contract():
    m = _tiny().eval()
    assert m.open_vocabulary and m.class_names == NAMES and m.feature_dim == 64
    v = _video()
    with torch.no_grad():
        logits = m(v)
        emb = m.features(v)
        assert emb.shape == (2, 64)
        torch.testing.assert_close(m.classify(emb), logits)
        other = ["alpha", "beta", "gamma"]
        t = m.text_embeddings_for(other)
        assert t.shape == (3, 64) and m.classify(emb, t).shape == (2, 3)
        torch.testing.assert_close(m.forward_from_taps(v, m.frame_taps(v[:, :, 0].flatten(0, 1))), logits)
        m.use_classes(other)
        assert m.class_names == other and m.num_classes == 3 and m.config["num_classes"] == 3
        torch.testing.assert_close(m(v), m.classify(emb, t))
    cam, cam_logits = m.cam_activations(v)
    assert cam.shape == (2, 8, 16, 64) and cam_logits.shape == (2, 3)
    torch.testing.assert_close(cam_logits.detach(), m(v).detach(), rtol=1e-5, atol=1e-5)


def test_eval_class_texts_are_cached_and_follow_the_weights():
    m = _tiny().eval()
    with torch.no_grad():
        a = m.class_text_embeddings()
        assert m.class_text_embeddings() is a and m.class_text is a
        m.adapters.text_up[0][0].bias.add_(1.0)            # a weight changes: recomputed
        b = m.class_text_embeddings()
    assert b is not a and not torch.equal(a, b)


def test_trainable_count_of_the_b16_recipe_on_the_meta_device():
    cfg = load_config("k400_msta_b16")["model"]
    with torch.device("meta"), placeholder_text_embeddings():
        m = build_model({"model": {**cfg, "clip_pretrained": None, "num_classes": 400}})
    per_layer = (768 * 128 + 128) + (512 * 128 + 128) + (128 * 128 + 128) + (128 * 768 + 768) + (128 * 512 + 512)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n == 5 * per_layer == 1_728_640          # the logs: 1.744M with ViCLIP-B (docs/msta.md)
    assert m.visual_layers == m.text_layers == [7, 8, 9, 10, 11]
    assert tuple(m.description_embeddings.shape) == (400, 512)  # placeholder, loaded with the checkpoint


# ----------------------------------------------------------------------------- the tools

FAST = fast_overrides("solver.epochs=1", "train.limit_train_batches=2", "data.test_crops=1", "data.test_clips=1",
                      "eval.validate=false", "output.plot=false", "model.num_segments=8", "data.num_segments=8")


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root):
    from tdsk.engine.trainer import fit
    from tdsk.train import demo_config

    base = tmp_path_factory.mktemp("msta_tools")
    root = demo_root(train_per_class=1, val_per_class=1)
    labels = base / "labels.txt"
    labels.write_text("\n".join(demo.CLASSES) + "\n")
    desc = _descriptions(base / "descriptions.json", demo.CLASSES)
    cfg = demo_config(root, FAST + [f"data.labels={labels}", f"model.descriptions={desc}"], name="demo_msta")
    res = fit(cfg, output_dir=str(base / "run"), classes=demo.CLASSES, progress=False)
    video = os.path.join(root, "videos", "val", "rotate_cw_0000.mp4")
    return {"cfg": cfg, "res": res, "root": root, "video": video, "ckpt": res.last_checkpoint}


def test_train_with_descriptions_then_evaluate(run, tmp_path):
    from tdsk.engine import checkpoint as C

    ckpt = C.load(run["ckpt"])
    assert ckpt["config"]["model"]["variant"] == "msta" and ckpt["step"] == 1  # 9 videos, batches of 6
    sd = ckpt["model_state_dict"]
    assert "description_embeddings" in sd and any(k.startswith("adapters.shared.") for k in sd)
    import tdsk.evaluate as tev

    dump = tmp_path / "dump.jsonl"
    assert tev.main(["--checkpoint", run["ckpt"], "--dump", str(dump), "--out", str(tmp_path / "ev"),
                     "--no-progress"]) == 0
    assert len(dump.read_text().splitlines()) == len(demo.CLASSES)


def test_predict_recognizer_timeline_and_extract(run, tmp_path, capsys):
    from tdsk import predict as tpr
    from tdsk.cli import extract as text
    from tdsk.timeline import timeline

    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], precision="fp32", device="cpu")
    assert rec.model.variant == "msta" and rec.model.class_names == list(demo.CLASSES)
    pred = rec.predict(run["video"], top_k=3)
    assert tpr.main([run["video"], "--checkpoint", run["ckpt"], "--json", "--precision", "fp32"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [t["index"] for t in out[0]["top"]][:3] == [t.index for t in pred.top]
    a = timeline(rec, run["video"], reuse=True, keep_logits=True, plot=False, spacing=1)
    b = timeline(rec, run["video"], reuse=False, keep_logits=True, plot=False, spacing=1)
    assert a.meta["reuse"] and len(a.rows) == len(b.rows) >= 1
    for x, y in zip(a.rows, b.rows):
        torch.testing.assert_close(torch.as_tensor(x["logits"]), torch.as_tensor(y["logits"]), rtol=1e-4, atol=1e-4)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{run['video']} 3\n")
    assert text.main([str(lst), "--checkpoint", run["ckpt"], "--out", str(tmp_path / "feat"), "--no-progress"]) == 0
    from tdsk.cli.serve import _text_classifier
    from tdsk.explain import explain

    assert _text_classifier(rec.model)  # tdsk.serve takes new class names for it
    ex = explain(rec, run["video"], str(tmp_path / "ex"))
    assert ex.cam.shape[0] == rec.model.num_segments and float(ex.cam.max()) == pytest.approx(1.0)


def test_export_onnx_bakes_the_class_embeddings(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tdsk.cli import export as texp

    out = tmp_path / "msta.onnx"
    # the export tool checks the file with ONNX Runtime against the eager model (exit 0 = they agree)
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(out), "--format", "onnx"]) == 0
    import onnx

    graph = onnx.load(str(out)).graph
    names = [i.name for i in graph.initializer]
    assert not any("text.tower" in n for n in names)  # the class embeddings, not the text tower


def test_demo_recipe_finds_its_packaged_descriptions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative path is looked up beside the packaged recipes
    m = build_model({"model": load_config("demo_msta")["model"]}, class_names=demo.CLASSES)
    assert tuple(m.description_embeddings.shape) == (len(demo.CLASSES), 64)


def test_use_classes_without_descriptions_saves_a_folder_that_reloads(tmp_path):
    from tdsk.models import from_pretrained, save_pretrained

    path = _descriptions(tmp_path / "d.json", NAMES)
    m = _tiny(descriptions=path).eval()
    m.use_classes(["alpha", "beta"])  # the file does not describe them: the term is off
    assert m.description_embeddings is None and m.config["descriptions"] is None
    save_pretrained(m, str(tmp_path / "f"), labels=m.class_names)
    m2 = from_pretrained(str(tmp_path / "f"))
    assert m2.description_embeddings is None and m2.class_names == ["alpha", "beta"]
    with torch.no_grad():
        torch.testing.assert_close(m2(_video()), m(_video()))
    m.use_classes(NAMES[:3])  # described again: the file comes back
    assert m.description_embeddings.shape[0] == 3 and m.config["descriptions"] == path
