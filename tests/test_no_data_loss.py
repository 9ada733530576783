"""No tool replaces a file or folder it did not write, and no output may be an input or another
output (tdsk._paths). Each case lost a user's files with exit 0 before."""
import os
import shutil

import pytest
import torch

from tdsk import _io
from tdsk import export as tex
from tdsk._paths import MARKER, PathCollisionError, check_distinct, record_written, written_by_tdsk
from tdsk.data import prepare
from tdsk.models import build_model, save_pretrained
from video_fixtures import video_fixtures  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny", clip_pretrained=None)


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


# ----------------------------------------------------------------------------- model folders

def test_save_pretrained_never_replaces_a_folder_it_did_not_write(tiny, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"my": "experiment"}')  # looks like a model folder; it is not
    (user / "notes.txt").write_text("three weeks of notes")
    before = _tree(user)
    with pytest.raises(FileExistsError, match="did not write"):
        save_pretrained(tiny, str(user))
    assert _tree(user) == before
    save_pretrained(tiny, str(user), overwrite=True)  # the user asked for it
    assert (user / "model.safetensors").exists() and not (user / "notes.txt").exists()


def test_save_pretrained_replaces_its_own_folder_unless_it_was_changed(tiny, tmp_path):
    folder = tmp_path / "model"
    save_pretrained(tiny, str(folder))
    assert (folder / MARKER).exists() and written_by_tdsk(str(folder))
    save_pretrained(tiny, str(folder))  # its own output: replaced
    (folder / "README.md").write_text("my edits")  # changed since: the user's now
    with pytest.raises(FileExistsError):
        save_pretrained(tiny, str(folder))
    assert (folder / "README.md").read_text() == "my edits"
    (folder / "README.md").unlink()
    (folder / "extra.bin").write_bytes(b"x")  # an unrecorded file: also the user's
    with pytest.raises(FileExistsError):
        save_pretrained(tiny, str(folder))


# ----------------------------------------------------------------------------- export

def test_export_out_equal_to_checkpoint_is_refused_and_the_checkpoint_kept(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"precious weights")
    link = tmp_path / "link.onnx"
    os.symlink(ckpt, link)
    for out, fmt in ((ckpt, "onnx"), (link, "onnx"), (ckpt, "folder")):
        assert tex.main(["--checkpoint", str(ckpt), "--out", str(out), "--format", fmt]) == 2
        assert "destroy the input" in capsys.readouterr().err or fmt == "folder"
        assert ckpt.read_bytes() == b"precious weights"
    run = tmp_path / "run"  # a folder export onto the folder that holds the checkpoint
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    assert tex.main(["--checkpoint", str(run / "best.pt"), "--out", str(run), "--format", "folder",
                     "--overwrite"]) == 2
    assert "holds the input --checkpoint" in capsys.readouterr().err
    assert (run / "best.pt").read_bytes() == b"weights"


def test_export_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"somebody else's model")
    assert tex.main(["--checkpoint", str(ckpt), "--out", str(mine)]) == 2
    assert "did not write" in capsys.readouterr().err and mine.read_bytes() == b"somebody else's model"
    user_dir = tmp_path / "folder"
    user_dir.mkdir()
    (user_dir / "config.json").write_text("{}")
    assert tex.main(["--checkpoint", str(ckpt), "--out", str(user_dir), "--format", "folder"]) == 2
    assert "did not write" in capsys.readouterr().err and (user_dir / "config.json").read_text() == "{}"


# ----------------------------------------------------------------------------- data.prepare

def test_prepare_keeps_a_users_own_list(video_fixtures, tmp_path, capsys):  # noqa: F811
    src = tmp_path / "videos" / "walk"
    src.mkdir(parents=True)
    shutil.copyfile(video_fixtures.videos["carphone_pristine.mp4"], src / "a.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (out / "videos.txt").write_text("my/own/list 12 0\n")
    args = ["frames", "--videos", str(tmp_path / "videos"), "--out", str(out), "--no-progress", "--workers", "1"]
    assert prepare.main(args) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "videos.txt").read_text() == "my/own/list 12 0\n"
    assert prepare.main(args + ["--overwrite"]) == 0
    assert (out / "videos.txt").read_text().startswith("walk/a ")
    assert prepare.main(args) == 0  # its own list now: a rerun may replace it
    assert prepare.main(args + ["--list-out", str(tmp_path / "videos")]) == 2  # the input folder itself


# ----------------------------------------------------------------------------- the rule itself

def test_check_distinct_resolves_links_and_names_both_sides(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    os.link(a, tmp_path / "hard.txt")
    os.symlink(a, tmp_path / "soft.txt")
    with pytest.raises(PathCollisionError, match="--dump and --save-logits"):
        check_distinct({"--dump": str(a), "--save-logits": str(tmp_path / "sub" / ".." / "a.txt")})
    with pytest.raises(PathCollisionError, match="is the input --list"):
        check_distinct({"--dump": str(tmp_path / "hard.txt")}, {"--list": str(a)})
    with pytest.raises(PathCollisionError):
        check_distinct({"--out": str(tmp_path / "soft.txt")}, {"--list": str(a)})
    check_distinct({"--dump": str(a), "--save-logits": None}, {"--list": str(tmp_path / "b.txt")})


def test_marker_records_size_and_digest(tmp_path):
    f = tmp_path / "list.txt"
    _io.write_text(str(f), "a 1 0\n")
    assert not written_by_tdsk(str(f))
    record_written(str(tmp_path), ["list.txt"], "test")
    assert written_by_tdsk(str(f))
    f.write_text("b 1 0\n")  # same size, other content
    assert not written_by_tdsk(str(f))


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    path = tmp_path / "r.json"
    _io.write_json(str(path), {"a": 1})
    with pytest.raises(ValueError):
        _io.write_json(str(path), {"a": float("nan")})
    assert path.read_text() == '{\n "a": 1\n}\n'
    with pytest.raises(RuntimeError), _io.atomic_path(str(path)) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{\n "a": 1\n}\n' and os.listdir(tmp_path) == ["r.json"]


def test_non_finite_buffers_are_refused_in_folders_and_checkpoints(tiny, tmp_path):
    """A BatchNorm running_var of inf loaded silently before (weights were checked, buffers not)."""
    from tdsk.inference import load_model

    bad = build_model("tiny", clip_pretrained=None)
    bad.load_state_dict(tiny.state_dict())
    name, buf = next((n, b) for n, b in bad.named_buffers() if b.is_floating_point() and b.numel())
    buf.view(-1)[0] = float("inf")
    folder = tmp_path / "bad"
    save_pretrained(bad, str(folder))
    with pytest.raises(ValueError, match=f"non-finite values.*{name}"):
        load_model(str(folder))
    ckpt = tmp_path / "official.pt"
    from tdsk.models import official_state_dict

    torch.save(official_state_dict(bad), ckpt)
    with pytest.raises(ValueError, match="non-finite values"):
        load_model(str(ckpt), cfg="tiny")
