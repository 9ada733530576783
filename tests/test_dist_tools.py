"""Every tool on a tiny DiST (one test per tool; the TDS-CLIP tests cover the tools themselves):
train (resume, DDP, init_from), evaluate (views, dump), predict, Recognizer, model folders,
export, extract, the timeline (frozen taps reused), explain and the official format."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import assert_resume_reproduces, fast_overrides, tool_env, write_recipe

import tdsk
from tdsk import demo
from tdsk.engine import checkpoint as C
from tdsk.engine.trainer import fit
from tdsk.train import demo_config

FAST = fast_overrides("solver.epochs=2", "train.limit_train_batches=2", "data.test_crops=1", "data.test_clips=1",
                      "eval.validate=false", "output.plot=false", "model.temporal_dim=16")


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_root):
    base = tmp_path_factory.mktemp("dist_tools")
    root = demo_root(train_per_class=1, val_per_class=1)
    labels = base / "labels.txt"
    labels.write_text("\n".join(demo.CLASSES) + "\n")
    cfg = demo_config(root, FAST + [f"data.labels={labels}", "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0"],
                      name="demo_dist")
    res = fit(cfg, output_dir=str(base / "run"), classes=demo.CLASSES, progress=False)
    video = os.path.join(root, "videos", "val", "rotate_cw_0000.mp4")
    return {"cfg": cfg, "res": res, "root": root, "video": video, "base": base, "ckpt": res.last_checkpoint}


def test_train_writes_a_dist_run_and_resume_gives_the_same_weights(run, tmp_path):
    res = run["res"]
    ckpt = C.load(res.last_checkpoint)
    assert ckpt["config"]["model"]["variant"] == "dist" and ckpt["step"] == 2  # 9 videos, batches of 6
    assert any(k.startswith("dist_net.") for k in ckpt["model_state_dict"])
    assert "text_embeddings" in ckpt["model_state_dict"]
    # resume from epoch 1 in a copy of the run: the same weights as the uninterrupted run
    # (the mixup/cutmix draws of epoch 2 are seeded by the step, not by what ran before)
    assert_resume_reproduces(run["cfg"], res, tmp_path, classes=demo.CLASSES)


def test_init_from_and_own_data_folders(run, tmp_path):
    """custom data (layout: folders, class names from the folders) + init_from a DiST checkpoint."""
    folders = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("left", "right"):
            os.makedirs(folders / split / cls)
            shutil.copy(os.path.join(run["root"], "videos", "val", f"{cls}_0000.mp4"), folders / split / cls / "a.mp4")
    cfg = demo_config(run["root"], FAST + ["solver.epochs=1", "train.limit_train_batches=1", "data.layout=folders",
                                           f"data.root={folders}", "data.train_list=train", "data.val_list=val",
                                           "data.test_list=val", "model.num_classes=null", "data.flip_label_pairs=[]",
                                           "data.flip=none", f"train.init_from={run['ckpt']}"], name="demo_dist")
    from tdsk.engine import finetune

    reports = []
    orig = finetune.init_from
    finetune.init_from = lambda *a, **k: reports.append(orig(*a, **k)) or reports[-1]
    try:
        res = fit(cfg, output_dir=str(tmp_path / "run"), progress=False)
    finally:
        finetune.init_from = orig
    ckpt = C.load(res.last_checkpoint)
    assert ckpt["classes"] == ["left", "right"]
    # dist_net comes from the 9-class run; the text embeddings are the new classes' (2 names)
    assert any(n.startswith("dist_net.") for n in reports[0].loaded)
    assert [r[0] for r in reports[0].reinitialised] == ["text_embeddings"]
    assert ckpt["model_state_dict"]["text_embeddings"].shape[0] == 2


DDP_WORKER = textwrap.dedent("""
    import os, sys, torch
    from tdsk.config import load_config
    from tdsk.engine.trainer import fit
    import tdsk.engine.distributed as D
    from tdsk.engine import trainer
    cfg = load_config(sys.argv[1])
    info = D.init("cpu")
    holder = {}
    build = trainer.build_model
    def keep(*a, **k):
        holder["m"] = build(*a, **k)
        holder["init"] = {n: p.detach().clone() for n, p in holder["m"].named_parameters()}
        return holder["m"]
    trainer.build_model = keep
    fit(cfg, output_dir=sys.argv[2], progress=False, dist_info=info)
    torch.save({"now": {k: v.detach().clone() for k, v in holder["m"].named_parameters()}, "init": holder["init"]},
               os.path.join(sys.argv[2], f"rank{info.rank}.pt"))
    D.shutdown(info)
""")


def test_ddp_two_ranks_train_dist_and_agree(run, tmp_path):
    cfg = dict(run["cfg"])
    cfg["solver"] = {**cfg["solver"], "epochs": 1}
    cfg_path = write_recipe(cfg, tmp_path / "cfg.yaml")
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), cfg_path, str(out)], env=tool_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0["now"][k], r1["now"][k]) for k in r0["now"])
    changed = [k for k in r0["now"] if not torch.equal(r0["now"][k], r0["init"][k])]
    assert changed and all(k.startswith("dist_net.") for k in changed)


def test_evaluate_views_and_dump(run, tmp_path, capsys):
    import tdsk.evaluate as tev

    dump = tmp_path / "dump.jsonl"
    rc = tev.main(["--checkpoint", run["ckpt"], "--views", "1x2", "--dump", str(dump), "--out", str(tmp_path / "ev"),
                   "--no-progress"])
    assert rc == 0
    rows = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(rows) == len(demo.CLASSES) and all(len(r["top"]) == 5 for r in rows)
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["views"] == [1, 2] or res.get("crops", 1) * res.get("clips", 2) == 2


def test_recognizer_predict_cli_folder_and_explain(run, tmp_path, capsys):
    from tdsk import predict as tpr
    from tdsk.models import save_pretrained

    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], precision="fp32", device="cpu")
    assert rec.model.variant == "dist" and list(rec.classes) == list(demo.CLASSES)
    pred = rec.predict(run["video"], top_k=3)
    rc = tpr.main([run["video"], "--checkpoint", run["ckpt"], "--json", "--precision", "fp32"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rc == 0 and [t["index"] for t in out[0]["top"]][:3] == [t.index for t in pred.top]
    folder = tmp_path / "folder"
    save_pretrained(rec.model, str(folder), labels=demo.CLASSES, recipe=rec.cfg)
    rec2 = tdsk.Recognizer.from_pretrained(str(folder), precision="fp32", device="cpu")
    assert torch.equal(rec2.model.text_embeddings, rec.model.text_embeddings)
    p2 = rec2.predict(run["video"], top_k=3)
    assert [t.index for t in p2.top] == [t.index for t in pred.top]
    assert [t.prob for t in p2.top] == pytest.approx([t.prob for t in pred.top], abs=1e-6)
    feat = rec.features(run["video"])
    assert feat.shape[-1] == rec.model.encoder.embed_dim
    from tdsk.explain import explain

    ex = explain(rec, run["video"], str(tmp_path / "ex"))
    assert ex.cam.shape[0] == rec.model.num_segments and os.path.isfile(ex.gif_path)
    assert float(ex.cam.max()) == pytest.approx(1.0)


def test_timeline_reuses_the_frozen_taps(run):
    from tdsk.timeline import timeline

    rec = tdsk.Recognizer.from_pretrained(run["ckpt"], precision="fp32", device="cpu")
    long = [c for c in demo.sample_clips() if os.path.basename(c) == "carphone_pristine.mp4"][0]  # real footage
    a = timeline(rec, long, reuse=True, keep_logits=True, plot=False, spacing=4)
    b = timeline(rec, long, reuse=False, keep_logits=True, plot=False, spacing=4)
    assert len(a.rows) > 1 and len(a.rows) == len(b.rows)
    for x, y in zip(a.rows, b.rows):
        torch.testing.assert_close(torch.as_tensor(x["logits"]), torch.as_tensor(y["logits"]), rtol=1e-4, atol=1e-4)
    assert a.meta["reuse"] and a.meta["clip_frames_run"] < b.meta["clip_frames_run"]


def test_export_pt2_and_extract(run, tmp_path):
    from tdsk.cli import export as texp
    from tdsk.cli import extract as text

    out = tmp_path / "model.pt2"
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(out)]) == 0
    assert out.is_file()
    lst = tmp_path / "list.txt"
    lst.write_text(f"{run['video']} 3\n")
    rc = text.main([str(lst), "--checkpoint", run["ckpt"], "--out", str(tmp_path / "feat"), "--no-progress"])
    assert rc == 0
    import numpy as np

    index = (tmp_path / "feat" / "index.csv").read_text().splitlines()
    assert len(index) == 2
    feat = np.load(tmp_path / "feat" / index[1].split(",")[3])
    assert feat.shape == (64,)


def test_export_onnx_checked_against_eager(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tdsk.cli import export as texp

    out = tmp_path / "dist.onnx"
    # the export tool runs the file with ONNX Runtime against the eager model (exit 0 = they agree)
    assert texp.main(["--checkpoint", run["ckpt"], "--out", str(out), "--format", "onnx"]) == 0
    import onnx

    model = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["tdsk"])
    assert "dist" in json.dumps(meta)  # the recipe it was exported from (model.variant: dist)
