"""Pictures of what the model saw (tdsk.explain): motion energy, class activation, files.

The clip is a real demo video (``tdsk.demo._render``: a textured patch moving over a real
background, encoded with the demo's own h264 settings). The generator returns the patch's
box in every frame, the ground truth the motion-energy peak is checked against.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from helpers import demo_sources  # noqa: E402
from tdsk import demo  # noqa: E402
from tdsk.data import sample_indices  # noqa: E402
from tdsk.explain import explain, motion_energy  # noqa: E402
from tdsk.models import build_model  # noqa: E402



def render_with_boxes(label, seed):
    """``(frames uint8 [F, 64, 64, 3], boxes int64 [F, 4])`` of one demo video; the boxes are the
    generator's own (tests/test_demo.py checks them against the pasted patch)."""
    spec = demo.DemoSpec()
    rng = np.random.default_rng([spec.seed, 7, seed, label])
    return demo._render(spec, label, rng, demo_sources())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("demo", clip_pretrained=None).eval()


@pytest.mark.parametrize("name,seed", [("right", 0), ("down", 1), ("left", 2)])
def test_motion_peak_on_patch(tmp_path, model, name, seed):
    frames, boxes = render_with_boxes(demo.CLASSES.index(name), seed)
    path = str(tmp_path / f"{name}.mp4")
    demo._encode(path, frames, demo.DemoSpec().fps)
    ex = explain(model, path, str(tmp_path / "out"))
    t, s = model.num_segments, int(model.config["input_size"])
    assert ex.motion.shape == ex.cam.shape == (t, s, s) and ex.frames.shape == (t, s, s, 3)
    for maps in (ex.motion, ex.cam):
        assert maps.dtype == np.float32 and maps.min() >= 0.0 and maps.max() <= 1.0
        assert np.isfinite(maps).all()
    assert np.allclose(ex.motion.reshape(t, -1).max(1), 1.0)
    # the frames the model saw: the demo recipe's test sampling, 64 px resized to 32 (scale 1/2)
    idx = sample_indices(len(frames), t, model.num_local, "test", 0, 1, "sth")
    scale = s / frames.shape[1]
    for seg in range(t):
        x0 = min(boxes[i][0] for i in idx[seg]) * scale - 1
        y0 = min(boxes[i][1] for i in idx[seg]) * scale - 1
        x1 = max(boxes[i][2] for i in idx[seg]) * scale + 1
        y1 = max(boxes[i][3] for i in idx[seg]) * scale + 1
        py, px = np.unravel_index(np.argmax(ex.motion[seg]), (s, s))
        assert x0 <= px <= x1 and y0 <= py <= y1, (seg, (px, py), (x0, y0, x1, y1))


def test_files_open_and_target_class(tmp_path, model):
    from PIL import Image

    frames, _ = render_with_boxes(demo.CLASSES.index("up"), 3)
    path = str(tmp_path / "up.mp4")
    demo._encode(path, frames, demo.DemoSpec().fps)
    ex = explain(model, path, str(tmp_path / "out"), classes=demo.CLASSES)
    assert ex.index == ex.predicted and ex.label == demo.CLASSES[ex.index]
    with Image.open(ex.grid_path) as im:
        assert im.format == "PNG" and im.size[0] >= 8 * 128 and im.size[1] >= 3 * 128
    with Image.open(ex.gif_path) as im:
        assert im.format == "GIF" and im.n_frames == model.num_segments
    saved = np.load(ex.npz_path)
    assert np.array_equal(saved["motion"], ex.motion) and np.array_equal(saved["cam"], ex.cam)
    other = (ex.predicted + 1) % model.num_classes
    ex2 = explain(model, path, None, target_class=other)
    assert ex2.index == other and ex2.grid_path is None
    assert np.array_equal(ex2.motion, ex.motion)
    with pytest.raises(ValueError, match="target_class"):
        explain(model, path, None, target_class=model.num_classes)


def test_motion_energy_of_still_and_moving():
    still = torch.zeros(2, 5, 3, 8, 8)
    assert torch.equal(motion_energy(still), torch.zeros(2, 8, 8))
    moving = still.clone()
    moving[:, 3, :, 2, 5] = 1.0                                  # one pixel flashes in frame 3
    e = motion_energy(moving)
    assert e[:, 2, 5].eq(1).all() and e.sum() == 2


@pytest.mark.parametrize("variant", ["tds_clip", "baseline"])
def test_grad_cam_batch_equals_per_clip(variant):
    """Batched maps equal clip-by-clip maps; the logits are the model's forward (TDS-CLIP and
    the mean-pool baseline, whose map is on the frozen CLIP's tokens entering its last block)."""
    from tdsk.explain import grad_cam, grad_cam_batch

    torch.manual_seed(1)
    m = build_model("demo", variant=variant, clip_pretrained=None).eval()
    video = torch.randn(3, 8, 5, 3, 32, 32)
    cam, logits, target = grad_cam_batch(m, video, targets=[0, 4, 8])
    assert cam.shape == (3, 8, 32, 32) and target.tolist() == [0, 4, 8]
    with torch.no_grad():
        assert torch.allclose(logits, m(video), atol=1e-5)
    assert cam.flatten(-2).amax(-1).gt(0).any()
    for b in range(3):
        one, lg, t = grad_cam(m, video[b:b + 1], target_class=int(target[b]))
        assert t == int(target[b]) and torch.allclose(lg, logits[b], atol=1e-5)
        assert torch.allclose(one, cam[b], atol=1e-5)
    with pytest.raises(ValueError, match="targets: 2 classes for 3 clips"):
        grad_cam_batch(m, video, targets=[0, 1])


def test_explain_baseline_and_refuses_other_models(tmp_path):
    frames, _ = render_with_boxes(demo.CLASSES.index("left"), 4)
    path = str(tmp_path / "left.mp4")
    demo._encode(path, frames, demo.DemoSpec().fps)
    torch.manual_seed(0)
    base = build_model("demo", variant="baseline", clip_pretrained=None).eval()
    ex = explain(base, path, str(tmp_path / "out"))
    assert ex.cam.shape == (8, 32, 32) and 0.0 <= ex.cam.min() and ex.cam.max() <= 1.0
    assert np.array_equal(ex.motion, explain(model_for_motion(), path, None).motion)  # model-free
    with pytest.raises(TypeError, match="TDS-CLIP model .* or the mean-pool baseline"):
        from tdsk.explain import grad_cam

        grad_cam(torch.nn.Linear(2, 2), torch.zeros(1, 8, 5, 3, 32, 32))


def model_for_motion():
    torch.manual_seed(2)
    return build_model("demo", clip_pretrained=None).eval()


def test_peak_in_box():
    from tdsk.explain import peak_in_box

    maps = torch.zeros(3, 4, 6)
    maps[0, 1, 2] = 1.0                          # peak at x=2, y=1
    maps[1, 3, 5] = 0.5                          # peak at x=5, y=3
    boxes = torch.tensor([[2, 1, 3, 2], [0, 0, 5, 4], [0, 0, 6, 4]])
    assert peak_in_box(maps, boxes).tolist() == [True, False, False]   # x1 is exclusive; all-zero: no peak
    # a coarse map scored at its own resolution: the peak is its cell's centre in frame pixels
    grid = torch.zeros(2, 4, 4)
    grid[0, 0, 0] = 1.0                          # cell (0, 0) of a 32 px frame: centre (4, 4)
    grid[1, 3, 1] = 1.0                          # cell (3, 1): centre (12, 28)
    boxes = torch.tensor([[3, 3, 5, 5], [0, 0, 12, 32]])
    assert peak_in_box(grid, boxes, 32).tolist() == [True, False]     # x = 12 is outside [0, 12)


def test_box_cell_fraction():
    from tdsk.explain import box_cell_fraction

    # 4 x 4 cells over 32 px, centres 4, 12, 20, 28: x in [0, 13) holds 2 of 4, y in [10, 32) 3 of 4
    got = box_cell_fraction(torch.tensor([[0, 10, 13, 32], [0, 0, 32, 32], [5, 5, 6, 6]]), 4, 32)
    assert got.tolist() == [pytest.approx(2 / 4 * 3 / 4), 1.0, 0.0]
