"""Run logging: metrics JSONL, TensorBoard, and the loss/accuracy curves PNG."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from tdsk._logging import logger


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Only rank 0 creates one (the others get ``None``). Every record carries
    ``kind`` ("train" per logging interval, "epoch" per epoch, "eval"), ``epoch``,
    ``step`` and ``time`` (seconds since the run started).
    """

    def __init__(self, directory: str, tensorboard: bool = True, resume: bool = False):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        self.start = time.time()
        if not resume and os.path.exists(self.path):
            os.remove(self.path)
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        self.tb_dir = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb_dir = os.path.join(directory, "tensorboard")
                self._tb = SummaryWriter(self.tb_dir)
            except Exception as exc:  # tensorboard missing: JSONL is enough
                logger.warning("TensorBoard logging off (%s); metrics still go to %s", exc, self.path)

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": int(step), "time": round(time.time() - self.start, 3)}
        record.update({k: _jsonable(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(path: str) -> list[dict]:
    """Records of a metrics file (a line torn by a kill is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_curves(metrics_path: str, out_path: str, title: str | None = None) -> str:
    """Loss (per logging interval and per epoch) and top-1 (train, val) curves -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train" and isinstance(r.get("loss"), (int, float))]
    epochs = [r for r in records if r["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["epoch_float"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (interval)")
    if epochs:
        xs = [r["epoch"] + 1 for r in epochs]
        ax_loss.plot(xs, [r.get("train_loss") for r in epochs], "o-", label="train (epoch mean)")
        val_loss = [(r["epoch"] + 1, r["val_loss"]) for r in epochs if r.get("val_loss") is not None]
        if val_loss:
            ax_loss.plot(*zip(*val_loss), "s-", label="val (NLL, no smoothing)")
        ax_acc.plot(xs, [100 * r.get("train_top1", float("nan")) for r in epochs], "o-", label="train top-1")
        val = [(r["epoch"] + 1, 100 * r["val_top1"]) for r in epochs if r.get("val_top1") is not None]
        if val:
            ax_acc.plot(*zip(*val), "s-", label="val top-1")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_confusion(matrix, class_names, out_path: str, title: str | None = None) -> str:
    """Row-normalised confusion matrix PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(m)
    size = min(max(4.0, 0.35 * k + 2), 40)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        names = list(class_names) if class_names else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90, fontsize=max(4, 9 - k // 20))
        ax.set_yticks(range(k), names, fontsize=max(4, 9 - k // 20))
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if m[i, j]:
                        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
