"""Training on your own data: fine-tuning from a checkpoint (train.init_from, train.freeze),
the custom recipes with data.labels, and lists derived from class folders."""
import os
import shutil

import pytest
import torch

from helpers import fast_overrides, run_tool
from tdsk import demo
from tdsk.config import ConfigError, load_config
from tdsk.data.custom import resolve_dataset
from tdsk.data.labels import read_labels
from tdsk.engine import checkpoint as C
from tdsk.engine.finetune import init_from
from tdsk.engine.trainer import build_model, fit
from tdsk.train import demo_config

FAST = fast_overrides("solver.epochs=1", "train.limit_train_batches=2", "output.plot=false")


@pytest.fixture(scope="module")
def source(demo_fit):
    """A demo-trained tdsk checkpoint (9 classes; the shared one, conftest.py) and its data
    (2 training videos per class)."""
    return demo_fit()


def _subset_lists(root, out, keep=(0, 1, 2)):
    """The demo lists restricted to classes ``keep``, relabelled 0..len(keep)-1."""
    paths = {}
    for split in ("train", "val"):
        lines = [x.split() for x in open(os.path.join(root, f"{split}.txt")).read().split("\n") if x]
        sub = [f"{p} {keep.index(int(lab))}" for p, lab in lines if int(lab) in keep]
        paths[split] = os.path.join(out, f"{split}3.txt")
        with open(paths[split], "w") as f:
            f.write("\n".join(sub) + "\n")
    return paths


def test_init_from_loads_matching_tensors_and_renews_the_head(source):
    cfg = demo_config(source["root"], FAST + ["model.num_classes=3"])
    model = build_model(cfg)
    fresh_head = model.head.weight.detach().clone()
    report = init_from(model, source["ckpt"])
    src = C.load(source["ckpt"])["model_state_dict"]
    own = model.state_dict()
    assert {n for n, *_ in report.reinitialised} == {"head.weight", "head.bias"}
    for name in report.loaded:
        assert torch.equal(own[name], src[name]), name
    assert len(report.loaded) == len(src) - 2
    assert torch.equal(model.head.weight, fresh_head)  # the 3-class head is new
    assert "re-initialised" in report.table() and "head" in report.table()


def test_init_from_an_official_checkpoint(source, tmp_path):
    from tdsk.models import export_official

    cfg = demo_config(source["root"], FAST)
    trained = build_model(cfg)
    trained.load_state_dict(C.load(source["ckpt"])["model_state_dict"], strict=False)
    export_official(trained, str(tmp_path / "official.pt"))
    model = build_model(cfg)
    report = init_from(model, str(tmp_path / "official.pt"))
    assert not report.reinitialised and not report.ignored and not report.kept
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_fine_tune_to_a_subset_with_a_frozen_stem(source, tmp_path):
    lists = _subset_lists(source["root"], str(tmp_path))
    cfg = demo_config(source["root"], FAST + ["model.num_classes=3", f"data.train_list={lists['train']}",
                                              f"data.val_list={lists['val']}", f"train.init_from={source['ckpt']}",
                                              "train.freeze=[side.sme]", "data.flip_label_pairs=[]", "train.batch_size=3"])
    res = fit(cfg, output_dir=str(tmp_path / "ft"), progress=False, loader_factory=demo.MemoryClipLoader)
    ckpt = C.load(res.last_checkpoint)
    src = C.load(source["ckpt"])["model_state_dict"]
    state = ckpt["model_state_dict"]
    assert ckpt["step"] == 2 and ckpt["epoch"] == 1  # fresh counters: weights only were taken
    assert state["head.weight"].shape[0] == 3
    sme = [k for k in state if k.startswith("side.sme.") and state[k].is_floating_point() and "running" not in k]
    assert sme and all(torch.equal(state[k], src[k]) for k in sme)  # frozen: still the source's, and saved
    moved = [k for k in state if k.startswith("side.blocks.") and k.endswith("weight") and not torch.equal(state[k], src[k])]
    assert moved  # the rest trained
    model = build_model(cfg)
    C.load_model_state(model, ckpt)  # the checkpoint is complete for its model


def test_freeze_of_an_unknown_module_names_the_key(source, tmp_path):
    cfg = demo_config(source["root"], FAST + ["train.freeze=[side.nothing]"])
    with pytest.raises(ConfigError, match=r"train\.freeze: 'side\.nothing' matches no trainable parameter"):
        fit(cfg, output_dir=str(tmp_path), progress=False, loader_factory=demo.MemoryClipLoader)


def test_labels_file_sets_num_classes(source, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("0,left\n1,right\n2,up\n")
    assert read_labels(str(labels)) == ["left", "right", "up"]
    cfg = load_config("custom_demo", [f"data.root={source['root']}", "data.train_list=train.txt",
                                      f"data.labels={labels}"])
    assert cfg["model"]["num_classes"] is None
    assert resolve_dataset(cfg, str(tmp_path / "run")) == ["left", "right", "up"]
    assert cfg["model"]["num_classes"] == 3
    cfg = load_config("custom_demo", [f"data.labels={labels}", "model.num_classes=4"])
    with pytest.raises(ConfigError, match="model.num_classes=4 but data.labels has 3"):
        resolve_dataset(cfg, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="model.num_classes is not set"):
        fit(load_config("custom_demo", [f"data.root={source['root']}"]), output_dir=str(tmp_path / "x"),
            progress=False)


def test_custom_recipe_on_class_folders_end_to_end(source, tmp_path):
    """`python -m tdsk.train --cfg custom_demo data.layout=folders ...` on <split>/<class>/<video>."""
    root = tmp_path / "mydata"
    names = list(demo.CLASSES)
    for split in ("train", "val"):
        for line in open(os.path.join(source["root"], f"{split}.txt")).read().split("\n"):
            if not line:
                continue
            rel, lab = line.split()
            dst = root / split / names[int(lab)].replace("_", " ")  # class folder names with spaces
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(source["root"], rel), dst / os.path.basename(rel))
    out = tmp_path / "run"
    args = ["--cfg", "custom_demo", "--output", out, "--no-progress", f"data.root={root}", "data.layout=folders",
            "data.train_list=train", "data.val_list=val", "solver.epochs=1", "train.limit_train_batches=1",
            "train.num_workers=0", "data.num_workers=0", "train.tensorboard=false"]
    proc = run_tool("tdsk.train", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = sorted(n.replace("_", " ") for n in names)
    (labels,), (train_list,) = (out / "lists").glob("labels-*.txt"), (out / "lists").glob("train-*.txt")
    assert read_labels(str(labels)) == want
    train = open(train_list).read().split("\n")
    assert len([x for x in train if x]) == 2 * len(names)
    ckpt = C.load(str(out / "epoch_0001.pt"))
    assert ckpt["classes"] == want and ckpt["config"]["model"]["num_classes"] == len(names)
    assert ckpt["config"]["data"]["train_list"] == str(train_list)
    # resuming with the same folders derives the same lists (same names: nothing replaced)
    again = run_tool("tdsk.train", *args, "--resume", "auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (out / "lists").iterdir()) == sorted(
        [labels.name, train_list.name] + [p.name for p in (out / "lists").glob("val-*.txt")])
    # a video added to a class folder changes the list: the resume check reports it
    first = sorted((root / "train").iterdir())[0]
    shutil.copy(next(first.iterdir()), first / "added.mp4")
    changed = run_tool("tdsk.train", *args, "--resume", "auto")
    assert changed.returncode == 2 and "data.train_list" in changed.stderr, changed.stderr[-2000:]
