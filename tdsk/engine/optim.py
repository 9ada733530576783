"""Optimizer, learning-rate schedule and loss of the official recipe (docs/recipe.md)."""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn

__all__ = ["param_groups", "build_optimizer", "WarmupCosine", "build_criterion"]


def param_groups(model: nn.Module, solver: Mapping) -> list[dict]:
    """The official three AdamW groups, built from *trainable* parameters only.

    * ``bn``: names containing both "bn" and "side" (side BatchNorm weights/biases), lr = base;
    * ``clip``: every other parameter of the visual model (official names ``visual.*``;
      tdsk's side network), lr = base x ``clip_ratio``;
    * ``other``: the classifier head (``fc.*`` officially, ``head.*`` in tdsk), lr = base.

    All groups use the same weight decay (0.15 officially): nothing is exempt, BN,
    LN, biases and position embeddings included. The frozen tower has
    ``requires_grad=False`` and never enters the optimizer. Each group remembers its
    ``lr_scale`` so the schedule can scale it.
    """
    base = float(solver["lr"])
    wd = float(solver.get("weight_decay", 0.0))
    clip_ratio = float(solver.get("clip_ratio", 1.0))
    groups = {"bn": [], "clip": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.removeprefix("module.").removeprefix("_orig_mod.").split(".", 1)[0]
        if "bn" in name and "side" in name:
            groups["bn"].append(p)
        elif top in ("fc", "head"):
            groups["other"].append(p)
        else:
            groups["clip"].append(p)
    scales = {"bn": 1.0, "clip": clip_ratio, "other": 1.0}
    out = [
        {"params": ps, "name": g, "lr": base * scales[g], "lr_scale": scales[g], "weight_decay": wd}
        for g, ps in groups.items()
        if ps
    ]
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def build_optimizer(model: nn.Module, solver: Mapping, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The solver's optimiser over ``groups`` (a model family's own, see
    :func:`tdsk.models.registry.param_groups_of`; default :func:`param_groups`)."""
    name = str(solver.get("optimizer", "adamw")).lower()
    if groups is None:
        groups = param_groups(model, solver)
    if name == "adamw":
        return torch.optim.AdamW(
            groups,
            lr=float(solver["lr"]),
            betas=tuple(float(b) for b in solver.get("betas", (0.9, 0.999))),
            eps=float(solver.get("eps", 1e-8)),
            weight_decay=float(solver.get("weight_decay", 0.0)),
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=float(solver["lr"]), momentum=float(solver.get("momentum", 0.9)),
                               weight_decay=float(solver.get("weight_decay", 0.0)))
    raise ValueError(f"solver.optimizer={name!r}: use adamw (official) or sgd")


class WarmupCosine:
    """lr(e) = base*e/W for e < W, then base*(f + (1-f)*(1+cos(pi*(e-W)/(E-W)))/2).

    ``schedule="cosine_full"`` (the DiST release, docs/dist.md): the cosine runs over all
    ``E`` epochs, ``lr(e) = base*(f + (1-f)*(1+cos(pi*e/E))/2)``, and the warm-up rises
    linearly from 0 to ``lr(W)``.

    ``e`` is the fractional epoch ``epoch + i/len(loader)``. The official loop calls
    :meth:`step` only at iteration 0 and whenever ``(i+1) % step_every == 0``
    (``step_every`` = 10), so the learning rate is piecewise constant over blocks of
    10 iterations and iterations 0-8 of epoch 0 run at lr 0; :meth:`should_step`
    encodes that rule. The schedule is a pure function of ``e``, so resuming needs
    only the last ``e``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, epochs: int, warmup_epochs: float = 0.0,
                 final_factor: float = 0.0, step_every: int = 10, schedule: str = "cosine"):
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.epochs = float(epochs)
        self.warmup = float(warmup_epochs)
        self.final = float(final_factor)
        self.step_every = max(1, int(step_every))
        self.schedule = schedule
        if schedule not in ("cosine", "cosine_full", "constant"):
            raise ValueError(f"solver.schedule={schedule!r}: use cosine, cosine_full or constant")
        self.last_epoch_value = 0.0
        self._apply(self.lr_at(0.0))

    def _decay(self, e: float) -> float:
        if self.schedule == "constant":
            return self.base_lr
        if self.schedule == "cosine_full":  # the cosine runs over all epochs, warm-up included
            progress = min(max(e / max(self.epochs, 1e-12), 0.0), 1.0)
        else:
            span = max(self.epochs - self.warmup, 1e-12)
            progress = min(max((e - self.warmup) / span, 0.0), 1.0)
        return self.base_lr * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress)))

    def lr_at(self, e: float) -> float:
        if self.warmup > 0 and e < self.warmup:
            # linear from 0 to the value the schedule has at the end of the warm-up
            return self._decay(self.warmup) * e / self.warmup
        return self._decay(e)

    def should_step(self, iteration: int) -> bool:
        return iteration == 0 or (iteration + 1) % self.step_every == 0

    def step(self, epoch_value: float) -> None:
        self.last_epoch_value = float(epoch_value)
        self._apply(self.lr_at(self.last_epoch_value))

    def _apply(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    @property
    def lr(self) -> float:
        return self.lr_at(self.last_epoch_value)

    def state_dict(self) -> dict:
        return {"last_epoch_value": self.last_epoch_value, "base_lr": self.base_lr, "epochs": self.epochs,
                "warmup": self.warmup, "final": self.final, "step_every": self.step_every}

    def load_state_dict(self, state: Mapping) -> None:
        self.step(float(state["last_epoch_value"]))


def build_criterion(solver: Mapping) -> nn.Module:
    """Label-smoothed cross entropy.

    timm's LabelSmoothingCrossEntropy, (1-s)*NLL + s*mean_k(-log p_k), equals
    ``nn.CrossEntropyLoss(label_smoothing=s)``.
    """
    return nn.CrossEntropyLoss(label_smoothing=float(solver.get("label_smoothing", 0.0)))
