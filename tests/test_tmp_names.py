"""Cleanups of interrupted writes know tdsk._io's temp names (``.<name>.XXXXXXXX.tmp``)."""
import os
import tempfile


def test_run_folder_cleanup_knows_the_io_temp_names(tmp_path):
    """A hard kill during a checkpoint / manifest / config.yaml write (all through tdsk._io) leaves
    ``.<name>.XXXXXXXX.tmp``; the run folder's start-up cleanup removes it, never a foreign file."""
    from tdsk.engine.rundir import remove_stale_temporaries

    left = []
    for base in (".epoch_0004.pt.", ".checkpoints.json.", ".config.yaml."):
        fd, path = tempfile.mkstemp(prefix=base, suffix=".tmp", dir=tmp_path)
        os.close(fd)
        left.append(os.path.basename(path))
    (tmp_path / ".best.pt.tmp42").write_bytes(b"torn")
    (tmp_path / ".notes.txt.abcdefgh.tmp").write_bytes(b"not ours")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(left + [".best.pt.tmp42"])
    assert (tmp_path / ".notes.txt.abcdefgh.tmp").exists()


def test_prepare_clear_removes_the_io_marker_temp(tmp_path):
    from tdsk.cli.prepare import MARKER, _clear

    fd, marker_tmp = tempfile.mkstemp(prefix=f".{MARKER}.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    (tmp_path / "00001.jpg").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("mine")
    _clear(str(tmp_path), "{:05d}.jpg")
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
