"""Scoring: single- and multi-view evaluation, top-k, per-class accuracy, confusion."""
from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk.engine import distributed as D


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    probs: np.ndarray  # [N, K] averaged class probabilities (this process's share unless gathered)
    labels: np.ndarray  # [N]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    def confusion(self) -> np.ndarray:
        k = self.num_classes
        m = np.zeros((k, k), dtype=np.int64)
        np.add.at(m, (self.labels, self.probs.argmax(1)), 1)
        return m

    def per_class_accuracy(self) -> np.ndarray:
        m = self.confusion()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(m) / m.sum(1)

    def pair_accuracy(self, a: int, b: int) -> tuple[float, int]:
        """Accuracy of telling class ``a`` from class ``b`` on their videos (chance = 50%)."""
        keep = (self.labels == a) | (self.labels == b)
        if not keep.any():
            return float("nan"), 0
        pred = np.where(self.probs[keep, a] >= self.probs[keep, b], a, b)
        return float((pred == self.labels[keep]).mean()), int(keep.sum())

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count}


def class_probabilities(model: nn.Module, video: torch.Tensor, autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [B, K], logits [B*V, K]) for ``video`` [B, T, M, 3, H, W] or [B, V, T, M, 3, H, W].

    With views, each view is scored on its own and the softmax probabilities are
    averaged over views (the official test protocol: mean of softmax, not of logits).
    """
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    if video.dim() == 7:
        b, v = video.shape[:2]
        with ctx:
            logits = model(video.flatten(0, 1))
        probs = logits.float().softmax(-1).view(b, v, -1).mean(1)
    else:
        with ctx:
            logits = model(video)
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
    probs = torch.cat(probs_all).numpy() if probs_all else np.zeros((0, 0), np.float32)
    labels = torch.cat(labels_all).numpy().astype(np.int64) if labels_all else np.zeros(0, np.int64)
    if dist_info.enabled:
        parts = [None] * dist_info.world_size
        torch.distributed.all_gather_object(parts, (probs, labels))
        parts = [p for p in parts if p[0].size]
        probs = np.concatenate([p[0] for p in parts]) if parts else probs
        labels = np.concatenate([p[1] for p in parts]) if parts else labels
    return score(probs, labels, seconds=time.time() - start)


def score(probs: np.ndarray, labels: np.ndarray, seconds: float = 0.0) -> EvalResult:
    n = len(labels)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0, probs, labels, seconds)
    k = probs.shape[1]
    top = np.argsort(-probs, axis=1)[:, : min(5, k)]
    top1 = float((top[:, 0] == labels).mean())
    top5 = float((top == labels[:, None]).any(1).mean())
    nll = float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean())
    return EvalResult(top1, top5, nll, n, probs, labels, seconds)


def write_per_class_csv(result: EvalResult, class_names: Sequence[str] | None, path: str) -> str:
    m = result.confusion()
    acc = result.per_class_accuracy()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_index", "class_name", "videos", "correct", "accuracy"])
        for i in range(result.num_classes):
            name = class_names[i] if class_names and i < len(class_names) else str(i)
            w.writerow([i, name, int(m[i].sum()), int(m[i, i]), "" if np.isnan(acc[i]) else f"{acc[i]:.6f}"])
    return path


def softmax_topk(logits: torch.Tensor, k: int = 5):
    probs = F.softmax(logits.float(), -1)
    return probs.topk(min(k, probs.shape[-1]), -1)
