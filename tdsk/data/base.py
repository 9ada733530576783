"""What every loader shares: per-pass bad-sample accounting and the :class:`VideoLoader` base.

The CPU loader (:mod:`tdsk.data.loader`) and the DALI loader (:mod:`tdsk.data.dali`)
both build on this module; it imports neither of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from tdsk._logging import logger
from tdsk.data.config import DataConfig
from tdsk.data.dataset import EpochSampler, VideoClipDataset
from tdsk.data.transforms import normalize

__all__ = ["VideoLoader", "BadSampleReport", "BadSampleError", "available_cores"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class BadSampleError(RuntimeError):
    """More than the configured fraction of an epoch's samples could not be decoded."""


@dataclass
class BadSampleReport:
    """Bad samples seen in one epoch on this rank: ``files`` maps path -> reason.

    ``skipped`` (val/test): ``(path, reason)`` of each item left out of the batches
    (train: empty, bad samples are replaced there).
    """

    epoch: int = 0
    split: str = ""
    num_samples: int = 0
    files: Dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def replaced(self) -> bool:
        """True at train (bad samples replaced), False at val/test (left out)."""
        return self.split == "train"

    @property
    def num_bad(self) -> int:
        return len(self.files)

    @property
    def fraction(self) -> float:
        return self.num_bad / max(1, self.num_samples)

    def offenders(self, limit: int = 10) -> str:
        items = list(self.files.items())[:limit]
        more = f"\n  ... and {self.num_bad - limit} more" if self.num_bad > limit else ""
        return "\n  ".join(f"{p}: {r}" for p, r in items) + more

    def __str__(self) -> str:
        fate = ("each replaced by another sample" if self.replaced else
                f"{len(self.skipped)} item(s) left out of the batches (not replaced)")
        head = (f"{self.split} epoch {self.epoch}: {self.num_bad} bad file(s) of {self.num_samples} samples "
                f"({100 * self.fraction:.2f}%), {self.attempts} failed attempt(s), {fate}")
        return head + (":\n  " + self.offenders() if self.files else "")


class VideoLoader:
    """Iterable over ``(video, labels)`` batches on ``device``; see the module docstring."""

    def __init__(self, dataset: VideoClipDataset, sampler: EpochSampler, loader: Optional[DataLoader],
                 device: torch.device, cfg: DataConfig, split: str):
        self.dataset = dataset
        self.sampler = sampler
        self.loader = loader
        self.device = device
        self.cfg = cfg
        self.split = split
        self.decoder = "pyav"
        self.epoch = 0
        self.bad_samples = BadSampleReport(0, split, len(sampler))
        #: val/test: ``(path, reason)`` of the videos left out of the last pass (the current one while iterating)
        self.skipped: List[Tuple[str, str]] = self.bad_samples.skipped
        self.history: List[BadSampleReport] = []
        self._warned: set = set()
        self._delivered = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def _record_bad(self, bad: Sequence[Tuple[str, str]]) -> None:
        report = self.bad_samples
        for path, reason in bad:
            report.attempts += 1
            if path not in report.files:
                report.files[path] = reason
            if path not in self._warned:
                self._warned.add(path)
                fate = "replaced by another" if report.replaced else "left out of the evaluation (not replaced)"
                logger.warning(f"bad sample {fate}: {path}: {reason}")
        limit = self.cfg.max_bad_fraction * report.num_samples
        if report.num_bad > limit:
            raise BadSampleError(
                f"{report.num_bad} bad file(s) in {self.split} epoch {self.epoch}, more than "
                f"max_bad_fraction={self.cfg.max_bad_fraction} of {report.num_samples} samples; "
                f"first offenders:\n  {report.offenders()}")

    def _start_pass(self) -> None:
        self.bad_samples = BadSampleReport(self.epoch, self.split, len(self.sampler))
        self.skipped = self.bad_samples.skipped
        self._delivered = 0

    def _accept(self, batch: dict) -> bool:
        """Account a collated batch; False when it holds no video (all skipped: not yielded)."""
        self.skipped.extend(batch.get("skipped", ()))
        if batch["bad"]:
            self._record_bad(batch["bad"])
        if batch["video"] is None:
            return False
        self._delivered += len(batch["index"])
        return True

    def _finish_pass(self) -> None:
        self.history.append(self.bad_samples)
        if self.bad_samples.num_bad:
            logger.warning(str(self.bad_samples))
        if self.skipped and not self._delivered:
            raise BadSampleError(
                f"no {self.split} video of this pass could be decoded ({len(self.skipped)} skipped, epoch "
                f"{self.epoch}); first offenders:\n  {self.bad_samples.offenders()}")

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._start_pass()
        non_blocking = self.device.type == "cuda"
        for batch in self.loader:
            if not self._accept(batch):
                continue
            video = batch["video"].to(self.device, non_blocking=non_blocking)
            video = normalize(video, self.cfg.mean, self.cfg.std)
            yield video, batch["label"].to(self.device, non_blocking=non_blocking)
        self._finish_pass()
