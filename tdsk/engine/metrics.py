"""Run logging: metrics JSONL, TensorBoard, and the loss/accuracy curves PNG."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from tdsk._logging import logger


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Only rank 0 creates one (the others get ``None``). Every record carries
    ``kind`` ("train" per logging interval, "epoch" per epoch, "val" per validation,
    "start" / "resume" markers), ``step`` and ``time`` (seconds since this process
    started). The file is only ever appended to; :func:`read_metrics` resolves the
    markers (a resumed run supersedes what the killed run logged after its checkpoint).
    """

    def __init__(self, directory: str, tensorboard: bool = True):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "metrics.jsonl")
        self.start = time.time()
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


def read_metrics(path: str, raw: bool = False) -> list[dict]:
    """Records of a metrics file (a line torn by a kill is skipped).

    Unless ``raw``, the markers are resolved: records before the last ``start`` marker
    belong to an earlier run in the same directory, and a ``resume`` marker at step ``s``
    drops the records logged after step ``s`` (the killed run's, redone by the resumed
    run). Markers themselves are not returned.
    """
    out = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if raw:
                out.append(rec)
            elif rec.get("kind") == "start":
                out = []
            elif rec.get("kind") == "resume":
                out = [r for r in out if r.get("step", 0) <= rec.get("step", 0)]
            else:
                out.append(rec)
    return out


def plot_curves(metrics_path: str, out_path: str, title: str | None = None) -> str:
    """Loss (per logging interval and per epoch) and top-1 (train, val) curves -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train" and isinstance(r.get("loss"), (int, float))]
    epochs = [r for r in records if r["kind"] == "epoch"]
    vals = {r["epoch"]: r for r in records if r["kind"] == "val"}
    epochs = [{**r, **{k: v for k, v in vals.get(r["epoch"], {}).items() if k.startswith("val_")}} for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["epoch_float"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (interval)")
    if epochs:
        xs = [r["epoch"] + 1 for r in epochs]
        ax_loss.plot(xs, [r.get("train_loss") for r in epochs], "o-", label="train (epoch mean)")
        val_loss = [(r["epoch"] + 1, r["val_loss"]) for r in epochs if isinstance(r.get("val_loss"), (int, float))]
        if val_loss:
            ax_loss.plot(*zip(*val_loss), "s-", label="val (NLL, no smoothing)")
        ax_acc.plot(xs, [100 * r.get("train_top1", float("nan")) for r in epochs], "o-", label="train top-1")
        val = [(r["epoch"] + 1, 100 * r["val_top1"]) for r in epochs if isinstance(r.get("val_top1"), (int, float))]
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
