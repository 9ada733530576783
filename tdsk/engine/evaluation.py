"""Scoring: single- and multi-view evaluation, top-k, per-class accuracy, confusion."""
from __future__ import annotations

import contextlib
import csv
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from tdsk._logging import logger
from tdsk.engine import distributed as D
from tdsk.models.registry import logits_of


@dataclass
class EvalResult:
    """Scores of one evaluation pass.

    ``probs`` ``[N, K]`` are the view-averaged class probabilities of the N scored videos
    (all ranks when gathered). A row that is not finite (the model produced NaN/inf for
    some view) is never a prediction: it counts as wrong in every metric and is counted
    in ``num_nonfinite``. Videos that could not be decoded are not scored at all; they
    are listed in ``skipped`` (``{"path", "reason"}``) and are not in ``count``.
    """

    top1: float
    top5: float
    loss: float
    count: int
    probs: np.ndarray
    labels: np.ndarray
    seconds: float = 0.0
    num_nonfinite: int = 0
    skipped: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    @property
    def finite(self) -> np.ndarray:
        """``[N]`` bool: the rows that are real predictions."""
        return np.isfinite(self.probs).all(1) if self.probs.size else np.zeros(len(self.labels), bool)

    @property
    def predictions(self) -> np.ndarray:
        """``[N]`` predicted class per video, ``-1`` where the output was not finite."""
        if not len(self.labels):
            return np.zeros(0, np.int64)
        pred = np.nan_to_num(self.probs, nan=-1.0).argmax(1)
        return np.where(self.finite, pred, -1)

    @property
    def is_finite(self) -> bool:
        """No non-finite output and finite scores: the only kind of pass that may select ``best.pt``."""
        return self.num_nonfinite == 0 and self.count > 0 and math.isfinite(self.top1) and math.isfinite(self.loss)

    def confusion(self) -> np.ndarray:
        """``[K, K]`` counts (true class, predicted class); non-finite rows are in no column."""
        k = self.num_classes
        m = np.zeros((k, k), dtype=np.int64)
        pred = self.predictions
        ok = pred >= 0
        np.add.at(m, (self.labels[ok], pred[ok]), 1)
        return m

    def videos_per_class(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)[: self.num_classes]

    def per_class_accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion()) / self.videos_per_class()

    def pair_accuracy(self, a: int, b: int) -> tuple[float, int]:
        """Accuracy of telling class ``a`` from class ``b`` on their videos (chance = 50%)."""
        keep = (self.labels == a) | (self.labels == b)
        if not keep.any():
            return float("nan"), 0
        finite = self.finite[keep]
        pred = np.where(self.probs[keep, a] >= self.probs[keep, b], a, b)
        return float(((pred == self.labels[keep]) & finite).mean()), int(keep.sum())

    def summary(self) -> dict:
        """JSON-ready: non-finite floats become ``None`` (``results.json`` stays valid JSON)."""
        def num(v):
            return v if math.isfinite(v) else None

        return {"top1": num(self.top1), "top5": num(self.top5), "loss": num(self.loss), "count": self.count,
                "nonfinite": self.num_nonfinite, "skipped": list(self.skipped)}


def class_probabilities(model: nn.Module, video: torch.Tensor, autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [B, K], logits [B*V, K]) for ``video`` [B, T, M, 3, H, W] or [B, V, T, M, 3, H, W].

    With views, each view is scored on its own and the softmax probabilities are
    averaged over views (the official test protocol: mean of softmax, not of logits).
    """
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    if video.dim() == 7:
        b, v = video.shape[:2]
        with ctx:
            logits = logits_of(model, model(video.flatten(0, 1)))
        probs = logits.float().softmax(-1).view(b, v, -1).mean(1)
    else:
        with ctx:
            logits = logits_of(model, model(video))
        probs = logits.float().softmax(-1)
    return probs, logits.float()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, autocast=None,
             dist_info: D.DistInfo | None = None, progress: bool = True, desc: str = "eval",
             limit_batches: int | None = None) -> EvalResult:
    """Run ``model`` (eval mode) over ``loader``; gather results from all ranks."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    dist_info = dist_info or D.DistInfo(device=device)
    probs_all, labels_all = [], []
    start = time.time()
    total = len(loader) if hasattr(loader, "__len__") else None
    if limit_batches:
        total = min(total or limit_batches, limit_batches)
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
               disable=not (progress and dist_info.is_main))
    seen = 0
    for i, (video, labels) in enumerate(loader):
        if limit_batches and i >= limit_batches:
            break
        video = video.to(device, non_blocking=True)
        probs, _ = class_probabilities(model, video, autocast)
        probs_all.append(probs.cpu())
        labels_all.append(labels.cpu())
        seen += labels.shape[0]
        bar.update()
        bar.set_postfix(videos=seen, refresh=False)
    bar.close()
    model.train(was_training)
    skipped = [{"path": p, "reason": r} for p, r in (getattr(loader, "skipped", None) or [])]
    probs = torch.cat(probs_all).numpy() if probs_all else np.zeros((0, 0), np.float32)
    labels = torch.cat(labels_all).numpy().astype(np.int64) if labels_all else np.zeros(0, np.int64)
    if dist_info.enabled:
        parts = [None] * dist_info.world_size
        torch.distributed.all_gather_object(parts, (probs, labels, skipped))
        skipped = [s for p in parts for s in p[2]]
        parts = [p for p in parts if p[0].size]
        probs = np.concatenate([p[0] for p in parts]) if parts else probs
        labels = np.concatenate([p[1] for p in parts]) if parts else labels
    result = score(probs, labels, seconds=time.time() - start)
    result.skipped = skipped
    if dist_info.is_main:
        if result.num_nonfinite:
            logger.warning(f"{desc}: {result.num_nonfinite} of {result.count} video(s) got non-finite model "
                           "outputs (NaN/inf); they count as wrong")
        if skipped:
            listed = "\n  ".join(f"{s['path']}: {s['reason']}" for s in skipped[:10])
            logger.warning(f"{desc}: {len(skipped)} undecodable video(s) were skipped (not scored):\n  {listed}")
    return result


def score(probs: np.ndarray, labels: np.ndarray, seconds: float = 0.0) -> EvalResult:
    """Top-1/top-5/NLL of view-averaged probabilities; non-finite rows count as wrong.

    The NLL is the mean over the finite rows (``nan`` when there are none).
    """
    n = len(labels)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0, probs, labels, seconds)
    k = probs.shape[1]
    finite = np.isfinite(probs).all(1)
    top = np.argsort(-np.where(finite[:, None], probs, 0.0), axis=1)[:, : min(5, k)]
    top1 = float(((top[:, 0] == labels) & finite).mean())
    top5 = float(((top == labels[:, None]).any(1) & finite).mean())
    p_true = probs[np.arange(n), labels][finite]
    nll = float(-np.log(np.clip(p_true, 1e-12, None)).mean()) if p_true.size else float("nan")
    return EvalResult(top1, top5, nll, n, probs, labels, seconds, num_nonfinite=int(n - finite.sum()))


def write_per_class_csv(result: EvalResult, class_names: Sequence[str] | None, path: str) -> str:
    """One row per class: videos (scored videos of that class), correct, accuracy."""
    m = result.confusion()
    videos = result.videos_per_class()
    acc = result.per_class_accuracy()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_index", "class_name", "videos", "correct", "accuracy"])
        for i in range(result.num_classes):
            name = class_names[i] if class_names and i < len(class_names) else str(i)
            w.writerow([i, name, int(videos[i]), int(m[i, i]), "" if np.isnan(acc[i]) else f"{acc[i]:.6f}"])
    return path
