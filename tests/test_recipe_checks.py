"""Recipe checks that gave a silently wrong run before (issue: nothing wrong)."""
import pytest

from tdsk.config import apply_overrides, load_config, read_recipe
from tdsk.schema import ConfigError, validate_recipe


def test_base_is_looked_up_next_to_the_recipe_never_in_the_working_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "ssv1_b16.yaml").write_text("model:\n  side_dim: 8\n")  # a stray file in the cwd
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("_base_: ssv1_b16.yaml\nsolver:\n  epochs: 2\n")
    monkeypatch.chdir(work)
    cfg = read_recipe(str(recipes / "mine.yaml"))
    assert cfg["model"]["side_dim"] == 320 and cfg["solver"]["epochs"] == 2  # the shipped base
    (recipes / "ssv1_b16.yaml").write_text("_base_: ssv1_b16\nmodel:\n  side_dim: 16\n")
    (recipes / "mine.yaml").write_text("_base_: ssv1_b16.yaml\n")
    assert read_recipe(str(recipes / "mine.yaml"))["model"]["side_dim"] == 16  # the one next to it
    (recipes / "other.yaml").write_text("_base_: nothing_like_this\n")
    with pytest.raises(ConfigError, match="no such file next to the recipe"):
        read_recipe(str(recipes / "other.yaml"))


@pytest.mark.parametrize("pairs, words", [
    ("[[0,1],[1,2]]", "already in flip_label_pairs"),
    ("[[3,3]]", "two different class indices"),
    ("[[0,9]]", "out of range for model.num_classes=9"),
])
def test_flip_label_pairs_are_checked_at_start(pairs, words):
    cfg = apply_overrides(load_config("demo"), [f"data.flip_label_pairs={pairs}"])
    with pytest.raises(ConfigError, match=words):
        validate_recipe(cfg)


def test_custom_recipes_do_not_flip_by_default():
    """A plain flip mislabels half the flipped clips of direction classes (left/right)."""
    for name in ("custom_b16", "custom_l14", "custom_demo"):
        assert load_config(name)["data"]["flip"] == "none", name


def _tiny_recognizer(data):
    import tdsk
    from tdsk.models import build_model

    m = build_model("tiny", clip_pretrained=None)
    return tdsk.Recognizer(m, {"model": dict(m.config), "data": data}, device="cpu", precision="fp32")


def test_inference_checks_the_data_section_and_prepared_views_against_the_model():
    import numpy as np
    import torch

    with pytest.raises(ConfigError, match="data.num_segments=8 but the model has num_segments=4"):
        _tiny_recognizer({"num_segments": 8})
    rec = _tiny_recognizer({})
    with pytest.raises(ValueError, match=r"prepared views must be \[V, 4, 5, 3, 64, 64\]"):
        rec.predict(torch.zeros(1, 8, 5, 3, 64, 64))  # ran before: a silently wrong answer
    with pytest.raises(ValueError, match="empty images"):
        rec.predict(np.zeros((8, 0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="top_k"):
        rec.predict(np.zeros((8, 16, 16, 3), np.uint8), top_k=0)


def test_timeline_arguments_out_of_range_are_one_clear_error():
    from tdsk.timeline import TimelineEngine

    rec = _tiny_recognizer({})
    for kw, words in (({"spacing": 0}, "spacing"), ({"clip_seconds": 0}, "clip_seconds"),
                      ({"clip_seconds": 1e308}, "clip_seconds"), ({"stride_seconds": float("inf")}, "stride_seconds"),
                      ({"top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=words):
            TimelineEngine(rec, 25.0, **kw)
    with pytest.raises(ValueError, match="fps"):
        TimelineEngine(rec, 1e308)


def test_the_timeline_window_defaults_to_the_recipes_clip_length():
    """A 4 s window on a model trained on 1.33 s clips gave a useless timeline."""
    from tdsk.timeline import TimelineEngine

    rec = _tiny_recognizer({})
    assert TimelineEngine(rec, 12.0).clip_seconds == 4.0
    rec.cfg["eval"] = {"clip_seconds": 16 / 12}
    engine = TimelineEngine(rec, 12.0)
    assert engine.clip_seconds == pytest.approx(1.3333, abs=1e-3) and engine.spacing == 4  # 16 frames / T=4
    assert TimelineEngine(rec, 12.0, clip_seconds=4.0).spacing == 12
    assert load_config("demo")["eval"]["clip_seconds"] == pytest.approx(16 / 12, abs=1e-3)
    with pytest.raises(ConfigError, match="eval.clip_seconds"):
        validate_recipe(apply_overrides(load_config("demo"), ["eval.clip_seconds=0"]))


def test_a_zero_frame_video_is_an_error_in_the_timeline(monkeypatch, tmp_path):
    """It gave an empty timeline (and files) with exit 0; plain predict says "zero frames"."""
    import tdsk.timeline as T
    from tdsk.data.decoders import DecodeError

    class NoFrames:
        fps, num_frames_hint = 12.0, 0

        def __init__(self, *a, **k):
            pass

        def __iter__(self):
            return iter(())

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def close(self):
            pass

    monkeypatch.setattr(T, "VideoFrames", NoFrames)
    with pytest.raises(DecodeError, match="zero frames"):
        T.timeline(_tiny_recognizer({}), str(tmp_path / "empty.mp4"), out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
