"""Clip transforms of the official recipe (docs/sampling.md §4-5), with randomness shared by all
frames of a clip.

A clip enters as ``uint8[N, H, W, 3]`` (N = T*M raw RGB frames, as decoded) and leaves
as ``uint8[N, 3, S, S]`` (train/val) or ``uint8[crops, N, 3, S, S]`` (test), S the
input size. Normalisation (/255, CLIP mean/std) is done later on the training device,
so only uint8 crosses the worker pipes and the host-to-device copy.

Train, Something-Something: RandAugment (raw frames) -> resize to exactly ``resize``
(256x320) bicubic -> official random-resized crop -> flip p=0.5 (the caller swaps the
label pairs) -> grayscale p (0 = no-op, but the draw is made). Kinetics: short side to
256 bicubic -> the same crop -> plain flip -> grayscale p=0.2.
Val: the same resize -> centre crop. Test: the same resize -> 1 centre crop or 3 crops
(left, right, centre; vertically centred).
"""
from __future__ import annotations

import math
import random
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "ClipRandAugment", "resize_clip", "random_resized_crop",
    "center_crop_box", "three_crop_boxes", "TrainTransform", "EvalTransform", "normalize",
]

from tdsk.schema import CLIP_MEAN, CLIP_STD  # noqa: E402 - the recipe's defaults (docs/model.md §2)

Size = Union[int, Sequence[int]]


def _resized_hw(height: int, width: int, size: Size) -> Tuple[int, int]:
    """Target (H, W): a pair is exact; an int is the short side (torchvision's rule)."""
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    size = int(size)
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _resize(clip: torch.Tensor, hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``uint8[N, 3, H, W]`` with antialiasing (close to PIL's filters), uint8 out.

    uint8 channels-last input takes PyTorch's dedicated uint8 kernels (the ones
    torchvision uses), ~10x faster than a float round trip.
    """
    if tuple(clip.shape[-2:]) == tuple(hw):
        return clip
    if mode == "nearest":
        return F.interpolate(clip, size=hw, mode="nearest")
    if clip.device.type == "cpu":
        return F.interpolate(clip.contiguous(memory_format=torch.channels_last), size=hw, mode=mode,
                             align_corners=False, antialias=True)
    # GPU (DALI path): antialiased kernels take float there.
    out = F.interpolate(clip.float(), size=hw, mode=mode, align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_clip(clip: torch.Tensor, size: Size, mode: str = "bicubic") -> torch.Tensor:
    """``uint8[N, 3, H, W]`` -> resized to ``size`` ([H, W] exact, or int short side)."""
    return _resize(clip, _resized_hw(clip.shape[-2], clip.shape[-1], size), mode)


def random_resized_crop(clip: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """The official GroupRandomSizedCrop (docs/sampling.md §4), shared by all frames.

    Area U(0.08, 1), aspect U(3/4, 4/3), width/height swapped with p=0.5, up to 10
    attempts; the crop is resized bilinearly to ``size``. If no attempt fits: bilinear
    short-side resize to ``size`` and a random ``size`` crop.
    """
    height, width = clip.shape[-2:]
    area = height * width
    for _ in range(10):
        target_area = rng.uniform(0.08, 1.0) * area
        aspect = rng.uniform(3.0 / 4.0, 4.0 / 3.0)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if rng.random() < 0.5:
            w, h = h, w
        if w <= width and h <= height:
            x1 = rng.randint(0, width - w)
            y1 = rng.randint(0, height - h)
            return _resize(clip[..., y1:y1 + h, x1:x1 + w], (size, size), "bilinear")
    clip = resize_clip(clip, size, "bilinear")
    height, width = clip.shape[-2:]
    x1 = rng.randint(0, width - size)
    y1 = rng.randint(0, height - size)
    return clip[..., y1:y1 + size, x1:x1 + size]


def center_crop_box(height: int, width: int, size: int) -> Tuple[int, int]:
    """(y, x) of torchvision's CenterCrop (the official val crop and 1-crop test)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def three_crop_boxes(height: int, width: int, size: int) -> List[Tuple[int, int]]:
    """(y, x) of the official 3 test crops, in order left, right, centre (docs/sampling.md §5).

    y = 2*floor((H-S)/4); x = 0, 4*floor((W-S)/4), 2*floor((W-S)/4). For 256x320 and
    S=224: (16, 0), (16, 96), (16, 48).
    """
    y = 2 * ((height - size) // 4)
    step = (width - size) // 4
    return [(y, 0), (y, 4 * step), (y, 2 * step)]


def normalize(video: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
              channel_dim: int = -3) -> torch.Tensor:
    """uint8 (or [0,255] float) -> float32 ``(x/255 - mean)/std`` along ``channel_dim``.

    Returns a new tensor; ``video`` is never modified (a float32 input included).
    """
    shape = [1] * video.dim()
    shape[channel_dim] = 3
    std_t = torch.tensor(std, dtype=torch.float32, device=video.device).view(shape)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=video.device).view(shape)
    # ``.to`` returns ``video`` itself when it is already float32: the first op must not be in place then.
    scaled = video.to(torch.float32)
    scaled = scaled.mul(1.0 / 255.0) if scaled is video else scaled.mul_(1.0 / 255.0)
    return scaled.sub_(mean_t).div_(std_t)


class ClipRandAugment:
    """timm RandAugment (e.g. ``rand-m7-n4-mstd0.5-inc1``) with one draw per clip.

    The op choice, the p=0.5 apply decisions and the magnitudes are drawn once and the
    same ops with the same parameters are applied to every frame (docs/sampling.md §4).
    Fill (128,128,128), bicubic, relative translate up to 0.45.
    """

    def __init__(self, config: str = "rand-m7-n4-mstd0.5-inc1"):
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        hparams = dict(translate_pct=0.45, img_mean=(128, 128, 128), interpolation=Image.BICUBIC)
        self.config = config
        self._ra = rand_augment_transform(config, hparams)
        if getattr(self._ra, "choice_weights", None) is not None:
            raise ValueError(f"weighted RandAugment op choice is not supported: {config!r}")

    def draw(self, rng: random.Random):
        """[(op, level_args)] to apply, drawn like timm's RandAugment/AugmentOp."""
        chosen = [rng.choice(self._ra.ops) for _ in range(self._ra.num_layers)]
        plan = []
        for op in chosen:
            if op.prob < 1.0 and rng.random() > op.prob:
                continue
            magnitude = op.magnitude
            if op.magnitude_std == float("inf"):
                magnitude = rng.uniform(0, magnitude)
            elif op.magnitude_std > 0:
                magnitude = rng.gauss(magnitude, op.magnitude_std)
            magnitude = max(0.0, min(magnitude, op.magnitude_max or 10.0))
            plan.append((op, self._level_args(op, magnitude, rng)))
        return plan

    @staticmethod
    def _level_args(op, magnitude: float, rng: random.Random) -> tuple:
        if op.level_fn is None:
            return tuple()
        # timm's level functions negate with the *global* `random` (shear, rotate, translate):
        # run them on a state drawn from our generator so a clip's plan depends on `rng` alone.
        saved = random.getstate()
        random.seed(rng.getrandbits(64))
        try:
            return op.level_fn(magnitude, op.hparams)
        finally:
            random.setstate(saved)

    def __call__(self, frames: np.ndarray, rng: random.Random) -> np.ndarray:
        """``uint8[N, H, W, 3]`` -> same shape, one op plan for all frames."""
        from PIL import Image

        plan = self.draw(rng)
        if not plan:
            return frames
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            img = Image.fromarray(frame)
            for op, level_args in plan:
                img = op.aug_fn(img, *level_args, **dict(op.kwargs))
            out[i] = np.asarray(img.convert("RGB"))
        return out


Frames = Union[np.ndarray, torch.Tensor]


def _to_tensor(frames: Frames) -> torch.Tensor:
    """numpy ``uint8[N, H, W, 3]`` -> ``uint8[N, 3, H, W]``; a tensor is taken as already ``[N, 3, H, W]``.

    No copy: the permuted view of NHWC memory is exactly the channels-last layout the
    uint8 resize kernels want.
    """
    if isinstance(frames, torch.Tensor):
        return frames
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def _grayscale(clip: torch.Tensor) -> torch.Tensor:
    # ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale.
    rgb = clip.float()
    gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).round_().clamp_(0, 255)
    return gray.to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


class TrainTransform:
    """Official train augmentation for one clip; returns ``(uint8[N, 3, S, S], flipped)``."""

    def __init__(self, input_size: int = 224, resize: Size = (256, 320), rand_augment: Optional[str] = None,
                 flip: bool = True, grayscale_p: float = 0.0):
        self.input_size = int(input_size)
        self.resize = resize
        self.rand_augment = ClipRandAugment(rand_augment) if rand_augment else None
        self.flip = flip
        self.grayscale_p = float(grayscale_p)

    def __call__(self, frames: Frames, rng: random.Random) -> Tuple[torch.Tensor, bool]:
        """``frames``: numpy ``uint8[N, H, W, 3]`` or a tensor ``uint8[N, 3, H, W]`` on any device."""
        if self.rand_augment is not None:
            if isinstance(frames, torch.Tensor):  # PIL ops: a round trip through the host
                device = frames.device
                frames = self.rand_augment(frames.permute(0, 2, 3, 1).cpu().numpy(), rng)
                frames = _to_tensor(frames).to(device)
            else:
                frames = self.rand_augment(frames, rng)
        clip = resize_clip(_to_tensor(frames), self.resize, "bicubic")
        clip = random_resized_crop(clip, self.input_size, rng)
        flipped = False
        if self.flip and rng.random() < 0.5:
            clip = clip.flip(-1)
            flipped = True
        if rng.random() < self.grayscale_p:  # the draw is made even when p = 0, as in the official code
            clip = _grayscale(clip)
        return clip.contiguous(), flipped


class EvalTransform:
    """Val (``crops=1``: centre crop) and test (``crops=3``: left, right, centre) views.

    Returns ``uint8[crops, N, 3, S, S]``.
    """

    def __init__(self, input_size: int = 224, resize: Size = (256, 320), crops: int = 1):
        if crops not in (1, 3):
            raise ValueError(f"test crops must be 1 or 3, got {crops}")
        self.input_size = int(input_size)
        self.resize = resize
        self.crops = crops

    def boxes(self, height: int, width: int) -> List[Tuple[int, int]]:
        if self.crops == 1:
            return [center_crop_box(height, width, self.input_size)]
        return three_crop_boxes(height, width, self.input_size)

    def __call__(self, frames: Frames) -> torch.Tensor:
        """``frames``: numpy ``uint8[N, H, W, 3]`` or a tensor ``uint8[N, 3, H, W]`` on any device."""
        clip = resize_clip(_to_tensor(frames), self.resize, "bicubic")
        height, width = clip.shape[-2:]
        s = self.input_size
        if height < s or width < s:
            raise ValueError(f"resized frames {height}x{width} are smaller than the crop {s}")
        return torch.stack([clip[..., y:y + s, x:x + s] for y, x in self.boxes(height, width)])
