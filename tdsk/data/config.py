"""The ``data:`` section of a recipe, as a validated dataclass.

Keys (defaults are the official Something-Something recipe, spec 8.1/8.4/9)::

    dataset: sth              # sampling rules: sth | kinetics
    format: auto              # list format: frames (<dir> <n> <label>) | video (<path> <label>) | auto
    root: ""                  # list entries are relative to this directory
    train_list / val_list / test_list: paths of the annotation lists
    labels: null              # class names (labels.txt, or index,name CSV); sets model.num_classes
    layout: lists             # lists | folders: the *_list keys name <class>/<video> folders
    template: "{:05d}.jpg"    # frame file names, numbered from 1
    num_segments: 8           # T
    num_local: 5              # M
    input_size: 224
    resize: [256, 320]        # [H, W] exact, or an int: the short side (K400: 256)
    num_sample: 2             # repeated augmentation at train (clips per video)
    rand_augment: rand-m7-n4-mstd0.5-inc1   # or null
    flip: sth                 # sth (label pairs swapped) | plain | none
    flip_label_pairs: [[86, 87], [93, 94], [166, 167]]
    grayscale_p: 0.0
    min_frames: 8             # 3-column entries shorter than this are dropped at train/val
    kinetics_wrap: false      # official decord wrap of negative local indices (parity only)
    decoder: auto             # auto | dali | pyav
    num_workers: 8            # CPU loader workers (capped at the machine's cores)
    decode_threads: 1         # FFmpeg threads per worker
    test_crops: 3
    test_clips: 2
    max_bad_fraction: 0.05    # more bad samples than this in an epoch stops with an error
    drop_last: true           # train batches
    mean / std: CLIP values
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from tdsk.data.transforms import CLIP_MEAN, CLIP_STD
from tdsk.schema import ConfigError, check_section

__all__ = ["DataConfig", "SS_FLIP_LABEL_PAIRS", "label_swap"]

SS_FLIP_LABEL_PAIRS = ((86, 87), (93, 94), (166, 167))


def label_swap(pairs: Sequence[Sequence[int]]) -> Dict[int, int]:
    """``{a: b, b: a}`` for each pair: the label a horizontally flipped clip of class ``a`` gets."""
    swap: Dict[int, int] = {}
    for a, b in pairs:
        swap[int(a)] = int(b)
        swap[int(b)] = int(a)
    return swap


@dataclass
class DataConfig:
    dataset: str = "sth"
    format: str = "auto"
    root: str = ""
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    labels: Optional[str] = None      # class names: labels.txt or index,name CSV (sets model.num_classes)
    layout: str = "lists"             # lists | folders (<list key> names a folder of <class>/<video>)
    template: str = "{:05d}.jpg"
    num_segments: int = 8
    num_local: int = 5
    input_size: int = 224
    resize: Union[int, List[int]] = field(default_factory=lambda: [256, 320])
    num_sample: int = 2
    rand_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1"
    flip: str = "sth"
    flip_label_pairs: List[List[int]] = field(default_factory=lambda: [list(p) for p in SS_FLIP_LABEL_PAIRS])
    grayscale_p: float = 0.0
    min_frames: int = 8
    kinetics_wrap: bool = False
    decoder: str = "auto"
    num_workers: int = 8
    decode_threads: int = 1
    test_crops: int = 3
    test_clips: int = 2
    max_bad_fraction: float = 0.05
    drop_last: bool = True
    mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: List[float] = field(default_factory=lambda: list(CLIP_STD))

    @classmethod
    def from_dict(cls, cfg: Union[None, Dict[str, Any], "DataConfig"]) -> "DataConfig":
        """Build from a ``data:`` mapping; unknown keys and wrong types are a
        :class:`~tdsk.schema.ConfigError` naming the key (they are usually typos)."""
        if isinstance(cfg, DataConfig):
            return cfg
        cfg = dict(cfg or {})
        if "data" in cfg and isinstance(cfg["data"], dict):  # a whole recipe was passed
            cfg = dict(cfg["data"])
        return check_section(cls, cfg, "data")

    def validate(self, prefix: str = "data") -> None:
        def check(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}.{key} {msg}")

        check(self.dataset in ("sth", "kinetics"), "dataset", f"must be sth or kinetics, got {self.dataset!r}")
        check(self.format in ("auto", "frames", "video"), "format", f"must be auto, frames or video, got {self.format!r}")
        check(self.flip in ("sth", "plain", "none"), "flip", f"must be sth, plain or none, got {self.flip!r}")
        check(self.decoder in ("auto", "dali", "pyav"), "decoder", f"must be auto, dali or pyav, got {self.decoder!r}")
        check(self.layout in ("lists", "folders"), "layout", f"must be lists or folders, got {self.layout!r}")
        for key in ("num_segments", "num_local", "num_sample", "input_size", "test_clips", "decode_threads"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.min_frames >= 0, "min_frames", f"must be >= 0, got {self.min_frames}")
        check(self.test_crops in (1, 3), "test_crops", f"must be 1 or 3, got {self.test_crops}")
        check(0.0 <= self.max_bad_fraction <= 1.0, "max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        check(0.0 <= self.grayscale_p <= 1.0, "grayscale_p", f"must be in [0, 1], got {self.grayscale_p}")
        check(len(self.mean) == 3, "mean", f"must be 3 numbers (R, G, B), got {self.mean}")
        check(len(self.std) == 3 and all(s > 0 for s in self.std), "std",
              f"must be 3 positive numbers (R, G, B; each pixel is divided by them), got {self.std}")
        for i, pair in enumerate(self.flip_label_pairs):
            check(len(pair) == 2 and min(pair) >= 0, f"flip_label_pairs[{i}]",
                  f"must be a pair of class indices >= 0, got {pair}")
        if isinstance(self.resize, list):
            check(len(self.resize) == 2, "resize", f"must be [H, W] or an int, got {self.resize}")
            check(min(self.resize) >= self.input_size, "resize", f"{self.resize} is smaller than input_size {self.input_size}")
        else:
            check(self.resize >= self.input_size, "resize", f"{self.resize} is smaller than input_size {self.input_size}")
        try:
            self.template.format(1)
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(f"{prefix}.template: bad frame template {self.template!r}: {exc}") from None

    @property
    def resize_size(self) -> Union[int, Tuple[int, int]]:
        return tuple(self.resize) if isinstance(self.resize, (list, tuple)) else int(self.resize)

    @property
    def label_swap(self) -> Dict[int, int]:
        return label_swap(self.flip_label_pairs)

    def list_for(self, split: str) -> Optional[str]:
        return {"train": self.train_list, "val": self.val_list, "test": self.test_list}[split]
