"""The tools on a tiny M2-CLIP (demo_m2clip, random CLIP): train + resume, evaluate, predict /
Recognizer / model folder, explain, timeline and extract (the generic paths: no frame_taps),
export to ONNX (checked against eager by the tool) and to the official format."""
import json
import os

import pytest
from helpers import assert_resume_reproduces, fast_overrides

import tdsk
from tdsk import demo
from tdsk.engine import checkpoint as C
from tdsk.engine.trainer import fit
from tdsk.train import demo_config

FAST = fast_overrides("solver.epochs=2", "train.limit_train_batches=2", "data.test_crops=1", "data.test_clips=1",
                      "eval.validate=false", "output.plot=false")


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root):
    base = tmp_path_factory.mktemp("m2clip_tools")
    root = demo_root(train_per_class=1, val_per_class=1)
    labels = base / "labels.txt"
    labels.write_text("\n".join(demo.CLASSES) + "\n")
    cfg = demo_config(root, FAST + [f"data.labels={labels}"], name="demo_m2clip")
    res = fit(cfg, output_dir=str(base / "run"), classes=demo.CLASSES, progress=False)
    video = os.path.join(root, "videos", "val", "rotate_cw_0000.mp4")
    return {"cfg": cfg, "res": res, "video": video, "ckpt": res.last_checkpoint}


def test_train_and_resume_give_the_same_weights(run, tmp_path):
    res = run["res"]
    ckpt = C.load(res.last_checkpoint)
    assert ckpt["config"]["model"]["variant"] == "m2clip" and ckpt["step"] == 2
    assert any(k.startswith("vision_adapters.") for k in ckpt["model_state_dict"])
    assert_resume_reproduces(run["cfg"], res, tmp_path, classes=demo.CLASSES)


def test_evaluate_predict_folder_explain_timeline_extract(run, tmp_path, capsys):
    import tdsk.evaluate as tev
    from tdsk import predict as tpr
    from tdsk.cli import extract as text
    from tdsk.explain import explain
    from tdsk.models import save_pretrained
    from tdsk.timeline import timeline

    assert tev.main(["--checkpoint", run["ckpt"], "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], precision="fp32", device="cpu")
    assert rec.model.variant == "m2clip" and list(rec.model.class_names) == list(demo.CLASSES)
    pred = rec.predict(run["video"], top_k=3)
    assert tpr.main([run["video"], "--checkpoint", run["ckpt"], "--json", "--precision", "fp32"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [t["index"] for t in out[0]["top"]][:3] == [t.index for t in pred.top]
    save_pretrained(rec.model, str(tmp_path / "folder"), labels=demo.CLASSES, recipe=rec.cfg)
    rec2 = tdsk.Recognizer.from_pretrained(str(tmp_path / "folder"), precision="fp32", device="cpu")
    assert list(rec2.model.class_names) == list(demo.CLASSES)
    assert [t.prob for t in rec2.predict(run["video"], top_k=3).top] == pytest.approx([t.prob for t in pred.top],
                                                                                       abs=1e-5)
    ex = explain(rec, run["video"], str(tmp_path / "ex"))
    assert ex.cam.shape[0] == rec.model.num_segments
    tl = timeline(rec, run["video"], keep_logits=True, plot=False, spacing=4)
    assert len(tl.rows) >= 1
    lst = tmp_path / "list.txt"
    lst.write_text(f"{run['video']} 3\n")
    assert text.main([str(lst), "--checkpoint", run["ckpt"], "--out", str(tmp_path / "feat"), "--no-progress"]) == 0


def test_export_onnx_and_official(run, tmp_path):
    from tdsk.cli import export as texp
    from tdsk.models import export_official, load_checkpoint

    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], precision="fp32", device="cpu")
    export_official(rec.model, str(tmp_path / "official.pth"), epoch=1)
    assert load_checkpoint(rec.model, str(tmp_path / "official.pth")).format == "official"
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
