"""Batch mixup and cutmix of training clips, with soft targets (docs/dist.md §Recipe).

Mixup (Zhang et al., ICLR 2018) blends every clip of a batch with the batch reversed,
``x' = lam * x + (1 - lam) * x.flip(0)``; cutmix (Yun et al., ICCV 2019) pastes one random
box of the reversed batch into every frame, ``lam`` being the share of the frame left
untouched. Both give soft targets ``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))``; the
label-smoothed cross entropy of tdsk's trainer takes them as they are (smoothing a mixed
target equals mixing smoothed targets, so the loss is the one of timm's ``Mixup`` with
``label_smoothing`` followed by a soft-target cross entropy).

The same clip-level box is cut from every frame of a clip (``[..., H, W]``: any layout
whose last two dimensions are the frame), so the motion inside the box stays coherent.

Why not ``timm.data.Mixup``: it draws from numpy's global random state, so a run resumed in
the middle of an epoch (tdsk's resume) could not mix the batches it mixes uninterrupted.
Here every draw comes from a generator seeded with ``(seed, rank, epoch, iteration)``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

__all__ = ["MixupCutmix"]


class MixupCutmix:
    """``mix(video, labels, epoch, iteration) -> (video', soft_targets[B, K])``.

    Args:
        num_classes: ``K``.
        mixup_alpha / cutmix_alpha: Beta(a, a) parameters; 0 turns that one off.
        prob: chance that a batch is mixed at all (otherwise its targets are one-hot).
        switch_prob: with both on, the chance of cutmix instead of mixup.
        seed, rank: with ``epoch`` and ``iteration``, the seed of every draw.

    ``video`` is any float tensor ``[B, ..., H, W]`` (tdsk: ``[B, T, M, 3, H, W]``); it is not
    modified in place. ``labels`` are class indices ``[B]``.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, seed: int = 0, rank: int = 0):
        if int(num_classes) < 1:
            raise ValueError(f"mixup: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.seed = int(seed)
        self.rank = int(rank)

    @classmethod
    def from_data_config(cls, data_cfg, num_classes: int, seed: int = 0, rank: int = 0):
        """The mixer a ``data:`` section asks for, or ``None`` when both alphas are 0."""
        if data_cfg.mixup_alpha <= 0 and data_cfg.cutmix_alpha <= 0:
            return None
        return cls(num_classes, data_cfg.mixup_alpha, data_cfg.cutmix_alpha, data_cfg.mixup_prob,
                   data_cfg.mixup_switch_prob, seed=seed, rank=rank)

    def _draw(self, rng: np.random.Generator) -> Tuple[float, bool]:
        """``(lam, use_cutmix)``; ``lam = 1`` leaves the batch as it is."""
        if rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def _box(rng: np.random.Generator, h: int, w: int, lam: float) -> Tuple[int, int, int, int]:
        """A box of area ``(1 - lam) * h * w`` (clipped at the border) around a uniform centre."""
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        return (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))

    def __call__(self, video: torch.Tensor, labels: torch.Tensor, epoch: int, iteration: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        if labels.dim() != 1 or labels.shape[0] != video.shape[0]:
            raise ValueError(f"mixup: labels must be Tensor[B={video.shape[0]}] of class indices, "
                             f"got {tuple(labels.shape)}")
        rng = np.random.default_rng([self.seed, self.rank, int(epoch), int(iteration)])
        lam, use_cutmix = self._draw(rng)
        if lam < 1.0 and use_cutmix:
            h, w = video.shape[-2:]
            y0, y1, x0, x1 = self._box(rng, h, w, lam)
            video = video.clone()
            video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the share actually left (box clipped)
        elif lam < 1.0:
            video = video * lam + video.flip(0) * (1.0 - lam)
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(torch.float32)
        targets = onehot * lam + onehot.flip(0) * (1.0 - lam)
        return video, targets
