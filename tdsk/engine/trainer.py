"""The training loop of the official recipe, made fast and restartable.

One call, :func:`fit`, trains a model from a recipe (see :mod:`tdsk.config`):
AdamW with the official parameter groups, warmup + cosine stepped every
``solver.lr_step_every`` iterations, label smoothing, repeated augmentation (done by
the loader), gradient accumulation, bf16/fp16/fp32 autocast (fp16 with a GradScaler),
optional ``torch.compile``, DDP under torchrun, validation by the epoch skip list,
atomic per-epoch checkpoints (+ ``best.pt``), exact resume, JSONL/TensorBoard metrics
and a PNG of the curves.

Exact resume: checkpoints are taken at epoch boundaries and hold everything the next
epoch depends on (weights, BN statistics, optimizer moments, GradScaler, RNG states);
the loader's order and augmentation are functions of (seed, rank, epoch, index), and
the LR is a function of the fractional epoch. A run killed at any moment and resumed
therefore reaches the next epoch boundary with bit-identical weights (fp32 on CPU).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from tdsk._logging import logger
from tdsk.engine import checkpoint as C
from tdsk.engine import distributed as D
from tdsk.engine.evaluation import EvalResult, evaluate
from tdsk.engine.metrics import MetricsLogger, plot_curves, read_metrics
from tdsk.engine.optim import WarmupCosine, build_criterion, build_optimizer

__all__ = ["NonFiniteLossError", "RunResult", "fit", "resolve_precision", "autocast_context", "build_model"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped before using that gradient."""


@dataclass
class RunResult:
    out_dir: str
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    metrics: str | None = None
    curves: str | None = None
    tensorboard: str | None = None
    best_val_top1: float | None = None
    epochs_done: int = 0
    steps_done: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    val: EvalResult | None = None


# ----------------------------------------------------------------------------- precision

def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 on GPU; fp32 on CPU."""
    p = str(precision or "auto").lower()
    aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "amp": "fp16"}
    p = aliases.get(p, p)
    if p == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if p not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision={precision!r}: use auto, bf16, fp16 or fp32")
    if p == "fp16" and device.type == "cpu":
        logger.warning("train.precision=fp16 on CPU is slow and poorly supported; consider bf16 or fp32")
    return p


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- building

def build_model(cfg: Mapping, variant: str | None = None, num_classes: int | None = None) -> nn.Module:
    """``tdsk.models.build_model`` on the recipe's ``model:`` section (+ variant/classes)."""
    from tdsk import models

    section = dict(cfg["model"])
    if variant is not None:
        section["variant"] = variant
    if num_classes is not None:
        section["num_classes"] = int(num_classes)
    return models.build_model(section)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _num_workers(cfg: Mapping) -> int | None:
    value = (cfg.get("train") or {}).get("num_workers")
    return None if value is None else int(value)


def _gpu_memory(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"


def _format_output_dir(cfg: Mapping) -> str:
    out = (cfg.get("output") or {}).get("dir") or "runs/{name}"
    name = (cfg.get("_meta") or {}).get("name", "run")
    return os.path.expanduser(str(out).format(name=name))


def _truncate_metrics(path: str, epoch: int, step: int) -> None:
    """Drop records a killed run wrote after the checkpoint we resume from."""
    if not os.path.exists(path):
        return
    keep = [r for r in read_metrics(path)
            if (r["kind"] == "epoch" and r.get("epoch", 0) < epoch) or (r["kind"] != "epoch" and r["step"] <= step)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop

def _check_labels(model: nn.Module, data_cfg: Mapping, loaders) -> None:
    """A list label >= model.num_classes would fail deep in the loss (or as a CUDA assert): say so now."""
    num_classes = getattr(model, "num_classes", None)
    for split, loader in loaders:
        records = getattr(getattr(loader, "dataset", None), "records", None)
        if not num_classes or not records:
            continue
        worst = max(records, key=lambda r: r.label)
        if worst.label >= num_classes:
            raise ValueError(
                f"{data_cfg.get(f'{split}_list')}:{worst.line}: label {worst.label} but model.num_classes="
                f"{num_classes} (labels must be 0..{num_classes - 1}); is this the list of another dataset?"
            )


def fit(cfg: Mapping, *, resume: str | None = None, output_dir: str | None = None, overwrite: bool = False,
        model: nn.Module | None = None, variant: str | None = None, classes: Sequence[str] | None = None,
        progress: bool = True, dist_info: D.DistInfo | None = None,
        loader_factory: Callable | None = None) -> RunResult:
    """Train according to ``cfg``; returns where everything was written.

    Args:
        cfg: a recipe from :func:`tdsk.config.load_config`.
        resume: ``None`` (fresh run), ``"auto"`` (newest epoch checkpoint in the output
            directory, or a fresh run if there is none) or a checkpoint path.
        output_dir: run directory (default ``output.dir`` of the recipe).
        overwrite: delete earlier checkpoints in the run directory instead of refusing.
        model: a pre-built model (default: ``tdsk.models.build_model(cfg["model"])``).
        variant: ``model.variant`` override (``"baseline"`` for the mean-pool baseline).
        classes: class names stored in the checkpoints (for ``tdsk.predict``).
        loader_factory: ``(split, **kwargs) -> loader`` replacing ``tdsk.data.build_loader``.

    Raises :class:`NonFiniteLossError` when the loss turns NaN/inf (all ranks stop at the
    same step; nothing is written for that epoch, earlier checkpoints stay).
    """
    from tdsk.config import check_consistency

    check_consistency(cfg)
    solver, train, evalc, outc = (dict(cfg.get(k) or {}) for k in ("solver", "train", "eval", "output"))
    info = dist_info or D.init(train.get("device", "auto"))
    device = info.device
    out_dir = os.path.expanduser(output_dir) if output_dir else _format_output_dir(cfg)
    start_time = time.time()
    seed = int(train.get("seed", 1024))
    # The model is built from the same seed on every rank (a randomly initialised frozen
    # tower must be identical everywhere: DDP only synchronises what it trains); the
    # official per-rank seed 1024 + rank is set after that.
    _seed_everything(seed)
    if train.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- resume target (decided before anything is written)
    resume_path = None
    if resume:
        if resume == "auto":
            resume_path = C.latest_checkpoint(out_dir)
            if resume_path is None and info.is_main:
                logger.info(f"--resume auto: no checkpoint in {out_dir}; starting a fresh run")
        else:
            resume_path = resume
            if not os.path.isfile(resume_path):
                raise FileNotFoundError(f"--resume {resume_path}: no such checkpoint")
    elif C.epoch_checkpoints(out_dir):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds checkpoints of an earlier run "
                f"({C.describe(p for _, p in C.epoch_checkpoints(out_dir))}). Continue it with --resume auto, "
                "start over with --overwrite, or choose another output.dir=...")
        if info.is_main:
            for _, p in C.epoch_checkpoints(out_dir):
                os.remove(p)
            for name in (C.BEST_NAME, "metrics.jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(out_dir, name))
            shutil.rmtree(os.path.join(out_dir, "tensorboard"), ignore_errors=True)
    D.barrier(info)

    # ---- model
    if model is None:
        model = build_model(cfg, variant=variant)
    model.to(device)
    _seed_everything(seed + info.rank)  # official: 1024 + rank (torch and numpy)
    raw_model = model
    clip_pretrained = (cfg.get("model") or {}).get("clip_pretrained")
    frozen_info = C.frozen_identity(raw_model, clip_pretrained)
    if train.get("sync_bn") and info.enabled:
        mcfg = cfg.get("model") or {}
        if mcfg.get("recompute_cheap", True) or mcfg.get("side_checkpoint"):
            raise ValueError(
                "train.sync_bn=true needs model.recompute_cheap=false and model.side_checkpoint=false: "
                "a recompute segment would all-reduce and update the BatchNorm statistics again in backward"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        raw_model = model
    n_train = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in raw_model.parameters() if not p.requires_grad)

    precision = resolve_precision(train.get("precision", "auto"), device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    optimizer = build_optimizer(raw_model, solver)
    epochs = int(solver.get("epochs", 1))
    schedule = WarmupCosine(optimizer, float(solver["lr"]), epochs, float(solver.get("warmup_epochs", 0)),
                            float(solver.get("final_lr_factor", 0.0)), int(solver.get("lr_step_every", 10)),
                            str(solver.get("schedule", "cosine")))
    criterion = build_criterion(solver)
    accum = max(1, int(solver.get("grad_accumulation", 1)))
    clip_norm = solver.get("grad_clip")

    start_epoch, global_step = 0, 0
    best = {"val_top1": None, "epoch": None}
    if resume_path:
        ckpt = C.load(resume_path, map_location="cpu")
        if not C.is_training_checkpoint(ckpt):
            raise ValueError(f"{resume_path} is not a tdsk training checkpoint (to fine-tune from official "
                             "weights, load them into the model instead of resuming)")
        C.load_model_state(raw_model, ckpt)
        optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        schedule.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step"])
        best = dict(ckpt.get("best") or best)
        rng = ckpt["rng"]
        if info.rank:  # every rank stores its own stream under rng_rank<k>
            rng = ckpt.get(f"rng_rank{info.rank}", rng)
        C.set_rng_state(rng)
        if info.is_main:
            logger.info(f"resumed from {resume_path}: {start_epoch} epoch(s), {global_step} step(s) done")
        del ckpt

    if info.enabled:
        ddp_kwargs = {"find_unused_parameters": bool(train.get("find_unused_parameters", False))}
        if device.type == "cuda":
            ddp_kwargs["device_ids"] = [device.index]
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    if train.get("compile"):
        model = torch.compile(model)

    # ---- data
    if loader_factory is None:
        from tdsk.data import build_loader as loader_factory
    batch_size = int(train.get("batch_size", 16))
    loader_kwargs = dict(device=device, num_workers=_num_workers(cfg), rank=info.rank, world_size=info.world_size,
                         seed=seed)
    train_loader = loader_factory(cfg["data"], "train", batch_size=batch_size, **loader_kwargs)
    val_loader = None
    if evalc.get("validate", True) and (cfg["data"].get("val_list") is not None):
        val_loader = loader_factory(cfg["data"], "val", batch_size=int(evalc.get("batch_size", batch_size)),
                                    **loader_kwargs)
    _check_labels(raw_model, cfg["data"], (("train", train_loader), ("val", val_loader)))
    skip = {int(e) for e in (evalc.get("skip_epochs") or [])}
    limit_train = train.get("limit_train_batches")
    limit_val = evalc.get("limit_val_batches")

    # ---- logging (rank 0 only)
    metrics = None
    if info.is_main:
        os.makedirs(out_dir, exist_ok=True)
        metrics_path = os.path.join(out_dir, "metrics.jsonl")
        if resume_path:
            _truncate_metrics(metrics_path, start_epoch, global_step)
        metrics = MetricsLogger(out_dir, tensorboard=bool(train.get("tensorboard", True)), resume=bool(resume_path))
        import yaml

        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(C.plain({k: v for k, v in cfg.items()}), f, sort_keys=False)
        logger.info(
            f"training {(cfg.get('_meta') or {}).get('name', '')} on {device} x{info.world_size} "
            f"({precision}); {n_train:,} trainable / {n_frozen:,} frozen parameters; "
            f"{len(train_loader)} iterations/epoch x {epochs - start_epoch} epoch(s); run dir {out_dir}")
    log_every = max(1, int(train.get("log_every", 10)))
    result = RunResult(out_dir=out_dir, metrics=os.path.join(out_dir, "metrics.jsonl"))
    result.best_val_top1 = best.get("val_top1")
    last_path = C.latest_checkpoint(out_dir) if resume_path else None

    from tqdm.auto import tqdm

    autocast = autocast_context(precision, device)
    try:
        for epoch in range(start_epoch, epochs):
            train_loader.set_epoch(epoch)
            n_iter = len(train_loader)
            if limit_train:
                n_iter = min(n_iter, int(limit_train))
            model.train()
            optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(3, dtype=torch.float64)  # loss*clips, correct, clips (this epoch, all ranks)
            window = torch.zeros(3, dtype=torch.float64)
            window_t0 = time.time()
            epoch_t0 = time.time()
            bar = tqdm(total=n_iter, desc=f"epoch {epoch + 1}/{epochs}", unit="it", dynamic_ncols=True,
                       leave=False, disable=not (progress and info.is_main))
            for i, (video, labels) in enumerate(train_loader):
                if i >= n_iter:
                    break
                if schedule.should_step(i):
                    schedule.step(epoch + i / n_iter)
                sync_now = (i + 1) % accum == 0 or i + 1 == n_iter
                no_sync = model.no_sync() if (info.enabled and not sync_now and hasattr(model, "no_sync")) \
                    else contextlib.nullcontext()
                with no_sync:
                    with autocast:
                        logits = model(video)
                    loss = criterion(logits.float(), labels)
                    stats = torch.stack([loss.detach().double() * labels.shape[0],
                                         (logits.detach().argmax(-1) == labels).sum().double(),
                                         torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=loss.device)])
                    stats = D.all_reduce_sum(stats, info).cpu()
                    mean_loss = float(stats[0] / stats[2])
                    if not math.isfinite(mean_loss):
                        raise NonFiniteLossError(
                            f"loss is {mean_loss} at epoch {epoch + 1} iteration {i + 1} (global step "
                            f"{global_step + 1}); stopping before this update")
                    scaler.scale(loss / accum).backward()
                if sync_now:
                    if clip_norm:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(raw_model.parameters(), float(clip_norm))
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                global_step += 1
                sums += stats
                window += stats
                bar.update()
                if info.is_main and ((i + 1) % log_every == 0 or i + 1 == n_iter):
                    dt = max(time.time() - window_t0, 1e-9)
                    rec = dict(epoch=epoch, epoch_float=epoch + (i + 1) / n_iter, loss=float(window[0] / window[2]),
                               top1=float(window[1] / window[2]), lr=schedule.lr, clips_per_s=float(window[2]) / dt)
                    mem = _gpu_memory(device)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}",
                                    clips_s=f"{rec['clips_per_s']:.1f}", **({"mem": mem} if mem else {}))
                    metrics.log("train", global_step, **rec)
                    window.zero_()
                    window_t0 = time.time()
            bar.close()
            epoch_time = time.time() - epoch_t0
            train_loss, train_top1 = float(sums[0] / max(sums[2], 1)), float(sums[1] / max(sums[2], 1))

            # ---- validation
            val_res = None
            if val_loader is not None and (epoch not in skip or epoch == epochs - 1):
                val_loader.set_epoch(epoch)
                val_res = evaluate(raw_model, val_loader, device=device, autocast=autocast, dist_info=info,
                                   progress=progress, desc=f"val {epoch + 1}/{epochs}", limit_batches=limit_val)
                result.val = val_res
            improved = val_res is not None and (best["val_top1"] is None or val_res.top1 > best["val_top1"])
            if improved:
                best = {"val_top1": val_res.top1, "epoch": epoch}

            # ---- checkpoint (rank 0) at the epoch boundary
            rng_states = [C.rng_state()]
            if info.enabled:
                rng_states = [None] * info.world_size
                torch.distributed.all_gather_object(rng_states, C.rng_state())
            if info.is_main:
                state = {
                    "format": C.FORMAT,
                    "model_state_dict": C.trainable_state_dict(raw_model, include_frozen=frozen_info["weights_included"]),
                    "optimizer_state_dict": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "epoch": epoch + 1,
                    "step": global_step,
                    "rng": rng_states[0],
                    "frozen": frozen_info,
                    "best": best,
                    "config": C.plain({k: v for k, v in cfg.items()}),
                    "classes": list(classes) if classes else None,
                    "precision": precision,
                    "world_size": info.world_size,
                }
                for r in range(1, len(rng_states)):
                    state[f"rng_rank{r}"] = rng_states[r]
                # The epoch record goes first: a kill between the two leaves a record that
                # resuming drops (it keeps only epochs < the checkpoint's), never a gap.
                rec = dict(epoch=epoch, train_loss=train_loss, train_top1=train_top1, lr=schedule.lr,
                           epoch_seconds=epoch_time, clips_per_s=float(sums[2]) / max(epoch_time, 1e-9))
                if val_res is not None:
                    rec.update(val_top1=val_res.top1, val_top5=val_res.top5, val_loss=val_res.loss)
                mem = _gpu_memory(device)
                if mem:
                    rec["gpu_max_memory"] = mem
                bad = getattr(train_loader, "bad_samples", None)
                if bad is not None and getattr(bad, "num_bad", 0):
                    rec["bad_samples"] = int(bad.num_bad)
                metrics.log("epoch", global_step, **rec)
                result.history.append(rec)
                # best.pt before the epoch file: after a kill in between, resuming re-runs
                # this epoch and rewrites best.pt with identical contents.
                if improved and outc.get("save_best", True):
                    C.atomic_save(state, os.path.join(out_dir, C.BEST_NAME))
                last_path = os.path.join(out_dir, C.EPOCH_PATTERN.format(epoch + 1))
                C.atomic_save(state, last_path)
                C.prune(out_dir, int(outc.get("keep_last", 3)))
                del state
                msg = f"epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}, train top-1 {100 * train_top1:.1f}%"
                if val_res is not None:
                    msg += f", val top-1 {100 * val_res.top1:.2f}% top-5 {100 * val_res.top5:.2f}%"
                logger.info(msg + f" ({epoch_time:.1f} s)")
            D.barrier(info)
            result.epochs_done = epoch + 1
    finally:
        if metrics is not None:
            metrics.close()
    result.steps_done = global_step
    result.last_checkpoint = last_path
    best_path = os.path.join(out_dir, C.BEST_NAME)
    result.best_checkpoint = best_path if os.path.exists(best_path) else None
    result.best_val_top1 = best.get("val_top1")
    result.seconds = time.time() - start_time
    if info.is_main:
        result.tensorboard = os.path.join(out_dir, "tensorboard") if train.get("tensorboard", True) else None
        if outc.get("plot", True) and os.path.exists(result.metrics):
            try:
                result.curves = plot_curves(result.metrics, os.path.join(out_dir, "curves.png"),
                                            title=(cfg.get("_meta") or {}).get("name"))
            except Exception as exc:  # plotting must never lose a finished run
                logger.warning(f"could not draw the curves: {exc}")
    return result
