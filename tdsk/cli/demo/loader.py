"""The demo's in-memory loader: the whole (tiny) demo dataset decoded once with PyAV and kept
in RAM, so the demo's epochs take seconds (:class:`MemoryClipLoader`)."""
from __future__ import annotations

import os

import numpy as np

from tdsk.cli.demo.dataset import CLASSES

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
