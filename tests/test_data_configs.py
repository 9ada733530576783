"""Every recipe's ``data:`` section validates and agrees with its ``model:`` section."""
import glob
import os

import pytest

from tdsk.config import read_recipe
from tdsk.data import DataConfig

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "tdsk", "configs")
RECIPES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def load(name):
    """The recipe with its ``_base_`` chain resolved (as training reads it)."""
    return read_recipe(os.path.join(CONFIG_DIR, f"{name}.yaml"))


@pytest.mark.parametrize("name", [r for r in RECIPES if r != "tiny" and not r.startswith("tiny_")])  # model-only
def test_data_section(name):
    cfg = load(name)
    assert "data" in cfg, f"{name}.yaml has no data: section"
    data = DataConfig.from_dict(cfg["data"])
    model = cfg.get("model", {})
    for key in ("num_segments", "num_local", "input_size"):
        if key in model:
            assert getattr(data, key) == model[key], f"{name}: data.{key} != model.{key}"


@pytest.mark.parametrize("name, template, views, flip, gray, ra", [
    ("ssv1_b16", "{:05d}.jpg", (3, 2), "sth", 0.0, True),
    ("ssv1_l14", "{:05d}.jpg", (3, 2), "sth", 0.0, True),
    ("ssv2_b16", "img_{:05d}.jpg", (3, 2), "sth", 0.0, True),
    ("ssv2_l14", "img_{:05d}.jpg", (3, 2), "sth", 0.0, True),
    ("k400_b16", None, (3, 4), "plain", 0.2, False),
    ("k400_l14", None, (3, 4), "plain", 0.2, False),
])
def test_official_recipes(name, template, views, flip, gray, ra):
    data = DataConfig.from_dict(load(name)["data"])
    if template is not None:
        assert data.format == "frames" and data.template == template and data.dataset == "sth"
        assert data.resize_size == (256, 320)
    else:
        assert data.format == "video" and data.dataset == "kinetics" and data.resize_size == 256
    assert (data.test_crops, data.test_clips) == views
    assert data.flip == flip and data.grayscale_p == gray and bool(data.rand_augment) == ra
    assert data.num_sample == 2 and data.input_size == 224
    if ra:
        assert data.rand_augment == "rand-m7-n4-mstd0.5-inc1"
