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
