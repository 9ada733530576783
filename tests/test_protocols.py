"""The open-vocabulary protocols (docs/protocols.md) end to end on the demo's clips with a tiny
DiST: zero-shot, few-shot (the list tool and the recipe option), base-to-novel, open-vocabulary
prediction (Recognizer, predict, ONNX export with baked classes) and their refusals.

One tiny DiST is trained once for the module on the *base* classes of the demo
(``data.class_subset=base``); every test reuses it."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import fast_overrides

import tdsk
from tdsk import demo
from tdsk.cli import evaluate as tev
from tdsk.cli import export as texp
from tdsk.cli import predict as tpred
from tdsk.cli import prepare as tprep
from tdsk.data import DataConfig
from tdsk.data.loader import load_records
from tdsk.data.protocols import class_split, few_shot_records
from tdsk.engine import checkpoint as C
from tdsk.engine.trainer import fit
from tdsk.models.open_vocab import NoTextClassifierError, use_classes
from tdsk.schema import ConfigError, validate_recipe
from tdsk.train import demo_config

FAST = fast_overrides("solver.epochs=1", "train.limit_train_batches=1", "data.test_crops=1", "data.test_clips=1",
                      "eval.validate=false", "output.plot=false", "model.temporal_dim=16", "data.flip=none")


def _write(path, lines):
    path.write_text("".join(f"{x}\n" for x in lines))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root):
    base = tmp_path_factory.mktemp("protocols")
    root = demo_root(train_per_class=2, val_per_class=1)
    labels = _write(base / "labels.txt", demo.CLASSES)
    cfg = demo_config(root, FAST + [f"data.labels={labels}", "data.class_subset=base", "model.num_classes=null"],
                      name="demo_dist")
    res = fit(cfg, output_dir=str(base / "run"), progress=False)
    return {"root": root, "labels": labels, "ckpt": res.last_checkpoint, "base": base, "cfg": cfg,
            "val": cfg["data"]["test_list"], "train": cfg["data"]["train_list"],
            "video": os.path.join(root, "videos", "val", "rotate_cw_0000.mp4")}


# ----------------------------------------------------------------------------- the model contract

def test_use_classes_switches_a_text_classifier_and_refuses_others():
    from tdsk.config import load_config
    from tdsk.models import build_model

    model = build_model(load_config("tiny_dist"), class_names=[f"class {i}" for i in range(10)])
    assert model.open_vocabulary and model.num_classes == 10
    emb = model.text_embeddings.clone()
    use_classes(model, ["class 3", "class 1", "something new"])
    assert model.class_names == ["class 3", "class 1", "something new"]
    assert model.num_classes == model.config["num_classes"] == 3 and tuple(model.text_embeddings.shape) == (3, 64)
    # the same name gets the same embedding (the random test text tower is seeded)
    torch.testing.assert_close(model.text_embeddings[:2], emb[[3, 1]], rtol=1e-5, atol=1e-5)
    assert model(torch.randn(2, 8, 1, 3, 64, 64)).shape == (2, 3)
    for overrides, variant in ((["model.classifier=linear"], "dist"), ([], "tds_clip")):
        other = build_model(load_config("tiny_dist" if variant == "dist" else "tiny", overrides))
        assert not getattr(other, "open_vocabulary", False)
        with pytest.raises(NoTextClassifierError, match=f"model.variant={variant}.*zero-shot / open-vocabulary"):
            use_classes(other, ["a", "b"])


# ----------------------------------------------------------------------------- base-to-novel

def test_training_on_base_classes_and_base_to_novel_evaluation(run, tmp_path, capsys):
    base, novel = class_split(demo.CLASSES, None, 0.5, 0)
    assert sorted(base + novel) == sorted(demo.CLASSES) and len(base) == 4 and class_split(demo.CLASSES) == (base, novel)
    ckpt = C.load(run["ckpt"])
    assert ckpt["classes"] == base and ckpt["model_state_dict"]["text_embeddings"].shape[0] == len(base)
    # the base model's training list: only base clips, labels re-indexed to the base order
    records = load_records(DataConfig.from_dict(ckpt["config"]["data"]), "train")
    assert len(records) == 2 * len(base) and sorted({r.label for r in records}) == list(range(len(base)))
    assert all(base[r.label] in os.path.basename(r.path) for r in records)

    out = tmp_path / "b2n"
    assert tev.main(["--checkpoint", run["ckpt"], "--protocol", "base-to-novel", "--out", str(out),
                     "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "base-to-novel"
    assert res["base"]["classes"] == base and res["novel"]["classes"] == novel
    assert res["base"]["count"] == len(base) and res["novel"]["count"] == len(novel)  # one val clip per class
    b, n = res["base"]["top1"], res["novel"]["top1"]
    assert res["harmonic_mean"] == pytest.approx(0.0 if b + n == 0 else 2 * b * n / (b + n))
    assert tev.harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3) and tev.harmonic_mean(0.0, 0.0) == 0.0
    assert "HM" in capsys.readouterr().out
    # another split from the command line (a split file), the same command
    split = _write(tmp_path / "base.txt", demo.CLASSES[:3])
    assert tev.main(["--checkpoint", run["ckpt"], "--protocol", "base-to-novel", "--out", str(tmp_path / "b2"),
                     "--no-progress", f"data.base_classes={split}"]) == 0
    res2 = json.loads((tmp_path / "b2" / "results.json").read_text())
    assert res2["base"]["classes"] == list(demo.CLASSES[:3]) and res2["novel"]["classes"] == list(demo.CLASSES[3:])


# ----------------------------------------------------------------------------- zero-shot

def _dump(path):
    return [json.loads(x) for x in open(path)]


def test_zero_shot_scores_against_the_class_file(run, tmp_path):
    """The demo's 9 classes (5 unseen in training) in file order, then the file and the list's
    labels reversed: the same videos, predictions permuted consistently, the same accuracy."""
    rev_classes = _write(tmp_path / "rev.txt", demo.CLASSES[::-1])
    k = len(demo.CLASSES)
    entries = [line.rsplit(None, 1) for line in open(run["val"]) if line.strip()]
    rev_list = _write(tmp_path / "val_rev.txt", [f"{p} {k - 1 - int(y)}" for p, y in entries])
    outs = {}
    for tag, classes, extra in (("fwd", run["labels"], []), ("rev", rev_classes, [f"data.val_list={rev_list}",
                                                                                  f"data.test_list={rev_list}"])):
        out = tmp_path / tag
        assert tev.main(["--checkpoint", run["ckpt"], "--protocol", "zero-shot", "--classes", classes, "--out",
                         str(out), "--dump", str(tmp_path / f"{tag}.jsonl"), "--top", str(k), "--no-progress",
                         *extra]) == 0
        outs[tag] = (json.loads((out / "results.json").read_text()), _dump(tmp_path / f"{tag}.jsonl"))
    (rf, df), (rr, dr) = outs["fwd"], outs["rev"]
    assert rf["protocol"] == "zero-shot" and rf["num_classes"] == k and rf["count"] == k
    assert rr["top1"] == pytest.approx(rf["top1"]) and rr["top5"] == pytest.approx(rf["top5"])
    for a, b in zip(df, dr):
        assert b["label"] == k - 1 - a["label"] and b["label_name"] == a["label_name"]
        pa = {t["label"]: t["prob"] for t in a["top"]}
        pb = {t["label"]: t["prob"] for t in b["top"]}
        assert pa.keys() == pb.keys() and all(pb[c] == pytest.approx(pa[c], abs=1e-5) for c in pa)
        assert b["top"][0]["index"] == k - 1 - a["top"][0]["index"] or \
            pb[b["top"][0]["label"]] == pytest.approx(pa[a["top"][0]["label"]], abs=1e-5)
        assert a["correct"] == b["correct"]
    # zero-shot on the base names alone = the trained model's own supervised scores (same embeddings)
    base, _ = class_split(demo.CLASSES)
    ids = {n: i for i, n in enumerate(demo.CLASSES)}
    base_list = _write(tmp_path / "val_base.txt", [f"{p} {base.index(demo.CLASSES[int(y)])}" for p, y in entries
                                                   if demo.CLASSES[int(y)] in base])
    assert ids  # (names index the full list)
    zs = tmp_path / "zs_base"
    assert tev.main(["--checkpoint", run["ckpt"], "--protocol", "zero-shot", "--classes",
                     _write(tmp_path / "base_names.txt", base), "--out", str(zs), "--no-progress",
                     f"data.test_list={base_list}"]) == 0
    sup = tmp_path / "sup"
    assert tev.main(["--checkpoint", run["ckpt"], "--out", str(sup), "--no-progress"]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (zs, sup))
    assert a["count"] == b["count"] == len(base) and a["top1"] == pytest.approx(b["top1"])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_zero_shot_refusals(run, tmp_path, capsys):
    def err(*argv):
        with pytest.raises(SystemExit) if argv and argv[0] == "usage" else _Null():
            rc = tev.main(list(argv[1:] if argv[0] == "usage" else argv))
            assert rc == 2
        return capsys.readouterr().err

    # a model without a text classifier: TDS-CLIP, and DiST with a linear head (built from the recipe)
    for cfg, extra in (("tiny", []), ("tiny_dist", ["model.classifier=linear"])):
        msg = err("--protocol", "zero-shot", "--cfg", cfg, "--classes", run["labels"], "--out", str(tmp_path / "o"),
                  *extra)
        assert "no text classifier" in msg and "zero-shot / open-vocabulary needs one" in msg
        assert "Traceback" not in msg
    msg = err("--checkpoint", run["ckpt"], "--protocol", "zero-shot", "--classes", str(tmp_path / "nope.txt"))
    assert "nope.txt" in msg and "not found" in msg and "Traceback" not in msg
    assert "--classes is for --protocol zero-shot" in err("usage", "--checkpoint", run["ckpt"], "--classes",
                                                          run["labels"])


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- few-shot

def test_few_shot_list_tool_is_deterministic(run, tmp_path, capsys):
    train = run["train"]

    def make(name, shots, seed):
        out = tmp_path / name
        assert tprep.main(["few-shot", "--list", train, "--shots", str(shots), "--seed", str(seed), "--out",
                           str(out)]) == 0
        return out.read_text().splitlines()

    a, b, c = make("a.txt", 1, 0), make("b.txt", 1, 0), make("c.txt", 1, 7)
    assert a == b and a != c
    labels = [line.rsplit(None, 1)[1] for line in a]
    assert sorted(labels) == [str(i) for i in range(len(demo.CLASSES))]  # exactly 1 per class
    two = make("two.txt", 2, 3)
    assert len(two) == 2 * len(demo.CLASSES) and set(two) == {x.strip() for x in open(train) if x.strip()}
    # the recipe option draws the same clips as the tool
    from tdsk.data.lists import parse_list

    assert [r.line for r in few_shot_records(parse_list(train, "", "auto"), 1, 7)] == \
        [i + 1 for i, x in enumerate(open(train)) if x.strip() in c]
    # refusals: one line, exit 2
    foreign = tmp_path / "mine.txt"
    foreign.write_text("keep me\n")
    for argv, what in ((["--shots", "1", "--out", str(foreign)], "tdsk did not write"),
                       (["--shots", "1", "--out", train], "--list"),
                       (["--shots", "3", "--out", str(tmp_path / "x.txt")], "fewer than 3"),
                       (["--shots", "0", "--out", str(tmp_path / "y.txt")], "--shots must be >= 1")):
        assert tprep.main(["few-shot", "--list", train, *argv]) == 2
        msg = capsys.readouterr().err
        assert what in msg and "Traceback" not in msg
    assert foreign.read_text() == "keep me\n"


def test_few_shot_training_run(run, tmp_path):
    cfg = demo_config(run["root"], FAST + ["data.few_shot=1", "data.few_shot_seed=4", f"data.labels={run['labels']}"],
                      name="demo_dist")
    records = load_records(DataConfig.from_dict(cfg["data"]), "train")
    assert sorted(r.label for r in records) == list(range(len(demo.CLASSES)))
    from tdsk.data import build_loader

    seen = {}

    def loaders(data_cfg, split, **kw):
        loader = build_loader(data_cfg, split, **kw)
        seen[split] = [r.path for r in loader.dataset.records]
        return loader

    res = fit(cfg, output_dir=str(tmp_path / "run"), progress=False, loader_factory=loaders)
    ckpt = C.load(res.last_checkpoint)
    assert ckpt["step"] == 1 and ckpt["config"]["data"]["few_shot"] == 1
    assert seen["train"] == [r.path for r in records]  # the run trained on the 1-shot list
    with pytest.raises(ConfigError, match=r"data\.few_shot must be >= 1"):
        validate_recipe(demo_config(run["root"], FAST + ["data.few_shot=0"], name="demo_dist"))
    with pytest.raises(ConfigError, match=r"data\.few_shot=3: .* fewer than 3"):
        load_records(DataConfig.from_dict({**cfg["data"], "few_shot": 3}), "train")


# ----------------------------------------------------------------------------- open-vocabulary prediction

def test_recognizer_and_predict_take_new_classes(run, tmp_path, capsys):
    names = ["a video of " + n.replace("_", " ") for n in demo.CLASSES]
    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], device="cpu", precision="fp32", classes=names)
    assert rec.num_classes == len(names) and rec.model.class_names == names
    p = rec.predict(run["video"], top_k=3)
    assert p.label in names and len(p.probs) == len(names)
    rev = tdsk.Recognizer.from_pretrained(run["ckpt"], device="cpu", precision="fp32", classes=names[::-1])
    torch.testing.assert_close(rev.probabilities(run["video"]), p.probs.flip(0), rtol=1e-4, atol=1e-6)
    # the timeline goes through the same classifier
    long = [c for c in demo.sample_clips() if os.path.basename(c) == "carphone_pristine.mp4"][0]
    tl = rec.timeline(long, plot=False, spacing=8)
    assert tl.rows and tl.rows[0]["top"][0]["label"] in names
    # predict --classes
    cls_file = _write(tmp_path / "names.txt", names)
    assert tpred.main([run["video"], "--checkpoint", run["ckpt"], "--classes", cls_file, "--json",
                       "--precision", "fp32", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["top"][0]["label"] == p.label
    # a model without a text classifier: one clear error
    from tdsk.config import load_config
    from tdsk.models import build_model

    cfg = load_config("tiny")
    with pytest.raises(NoTextClassifierError, match="no text classifier"):
        tdsk.Recognizer(build_model(cfg), cfg, ["a", "b"], device="cpu", precision="fp32", switch_classes=True)
    # by default the names are display names: a text classifier is not switched
    dist_cfg = load_config("tiny_dist")
    model = build_model(dist_cfg, class_names=[f"class {i}" for i in range(10)])
    shown = [f"pretty {i}" for i in range(10)]
    rec = tdsk.Recognizer(model, dist_cfg, shown, device="cpu", precision="fp32")
    assert rec.classes == shown and model.class_names == [f"class {i}" for i in range(10)]


def test_onnx_export_bakes_the_classes(run, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    names = ["wave", "turn left", "spin", "nothing at all", "rotate"]
    out = tmp_path / "zs.onnx"
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(out), "--classes",
                      _write(tmp_path / "c.txt", names)]) == 0
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["tdsk"])
    assert meta["classes"] == names and meta["num_classes"] == len(names)
    model, _, _ = tdsk.inference.load_model(run["ckpt"])
    use_classes(model, names)
    video = torch.randn(2, model.num_segments, 1, 3, 32, 32)
    with torch.no_grad():
        ref = model(video).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"video": video.numpy()})[0]
    assert got.shape == (2, len(names))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_model_folder_with_new_classes_reloads_them(run, tmp_path):
    """export --format folder --classes: the folder holds the switched classifier (what serve,
    extract and predict load)."""
    names = ["wave", "spin", "rotate"]
    out = tmp_path / "folder"
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(out), "--format", "folder", "--classes",
                      _write(tmp_path / "c.txt", names)]) == 0
    rec = tdsk.Recognizer.from_pretrained(str(out), device="cpu", precision="fp32")
    assert rec.classes == names and rec.model.class_names == names and rec.num_classes == 3
    direct = tdsk.Recognizer.from_pretrained(run["ckpt"], device="cpu", precision="fp32", classes=names)
    torch.testing.assert_close(rec.probabilities(run["video"]), direct.probabilities(run["video"]))


# ----------------------------------------------------------------------------- every text-classifier family

@pytest.mark.parametrize("recipe", ["demo_m2clip", "demo_msta"])
def test_protocols_run_the_adapter_families(recipe, run, tmp_path):
    """The same commands on M2-CLIP and MSTA (whose class texts come from a text tower with
    trained adapters): train on the base classes, base-to-novel, then zero-shot on the full
    class list, where the base classes score as in the base-to-novel run."""
    overrides = fast_overrides("solver.epochs=1", "train.limit_train_batches=1", "data.test_crops=1",
                               "data.test_clips=1", "eval.validate=false", "output.plot=false", "data.flip=none",
                               f"data.labels={run['labels']}", "data.class_subset=base", "model.num_classes=null")
    cfg = demo_config(run["root"], overrides, name=recipe)
    res = fit(cfg, output_dir=str(tmp_path / "run"), progress=False)
    base, novel = class_split(demo.CLASSES)
    assert C.load(res.last_checkpoint)["classes"] == base
    out = tmp_path / "b2n"
    assert tev.main(["--checkpoint", res.last_checkpoint, "--protocol", "base-to-novel", "--out", str(out),
                     "--no-progress"]) == 0
    b2n = json.loads((out / "results.json").read_text())
    assert b2n["base"]["classes"] == base and b2n["novel"]["classes"] == novel
    b, n = b2n["base"]["top1"], b2n["novel"]["top1"]
    assert b2n["harmonic_mean"] == pytest.approx(0.0 if b + n == 0 else 2 * b * n / (b + n))
    zs = tmp_path / "zs"
    assert tev.main(["--checkpoint", res.last_checkpoint, "--protocol", "zero-shot", "--classes", run["labels"],
                     "--out", str(zs), "--no-progress"]) == 0
    z = json.loads((zs / "results.json").read_text())
    assert z["protocol"] == "zero-shot" and z["num_classes"] == len(demo.CLASSES) and z["count"] == len(demo.CLASSES)
    # open-vocabulary prediction: the trained base model scores all nine names, and reversing
    # the names reverses the probabilities
    names = list(demo.CLASSES)
    rec = tdsk.Recognizer.from_pretrained(res.last_checkpoint, device="cpu", precision="fp32", classes=names)
    rev = tdsk.Recognizer.from_pretrained(res.last_checkpoint, device="cpu", precision="fp32", classes=names[::-1])
    assert rec.num_classes == len(names) and rec.model.class_names == names
    torch.testing.assert_close(rev.probabilities(run["video"]), rec.probabilities(run["video"]).flip(0),
                               rtol=1e-4, atol=1e-6)


def test_few_shot_tool_draws_from_what_training_reads(tmp_path):
    """Short 3-column entries are dropped before the draw (data.min_frames, as training does), so
    the tool's list is the recipe option's; a path with a U+0085 byte sequence keeps its line."""
    from tdsk.cli.prepare import write_few_shot_list
    from tdsk.data.lists import parse_list

    rows = []
    for c in range(3):
        rows += [f"c{c}_long{i} 20 {c}" for i in range(3)] + [f"c{c}_short{i} 4 {c}" for i in range(3)]
    rows[0] = "c0_\u0085odd 20 0"
    lst = tmp_path / "train.txt"
    lst.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "k2.txt"
    assert write_few_shot_list(str(lst), 2, 0, str(out)) == (6, 3)
    lines = out.read_bytes().decode("utf-8").split("\n")[:-1]  # (str.splitlines would split at U+0085)
    assert len(lines) == 6 and all("short" not in x for x in lines)
    assert set(lines) <= set(rows)
    want = few_shot_records(parse_list(str(lst), "", min_frames=8), 2, 0, str(lst))
    assert [x.split()[0] for x in lines] == [os.path.basename(r.path) for r in want]
