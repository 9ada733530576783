"""The training loop of the official recipe, made fast and restartable.

One call, :func:`fit`, trains a model from a recipe (see :mod:`tdsk.config`):
AdamW with the official parameter groups, warmup + cosine stepped every
``solver.lr_step_every`` iterations, label smoothing, repeated augmentation (done by
the loader), gradient accumulation, bf16/fp16/fp32 autocast (fp16 with a GradScaler),
optional ``torch.compile``, DDP under torchrun, validation by the epoch skip list,
atomic checkpoints (+ ``best.pt``), exact resume, JSONL/TensorBoard metrics and a PNG
of the curves. The run-directory rules (lock, resume, pruning) are in
:mod:`tdsk.engine.rundir`.

``fit`` is a sequence of named steps: :func:`_open_run_dir` (lock, choose and read
what to resume, once), :func:`_build` (model, optimiser, schedule), :func:`_restore`,
:func:`_build_loaders`, then per epoch :func:`_train_epoch`, :func:`_save_checkpoint`
(before validation, so a failing validation never loses the epoch) and
:func:`_validate`.

Exact resume: a checkpoint holds everything the rest of the run depends on (weights,
BN statistics, optimizer moments, GradScaler, RNG states and, inside an epoch, the
iteration and the epoch's running sums); the loader's order and augmentation are
functions of (seed, rank, epoch, index) and the LR is a function of the fractional
epoch, so a run killed at any moment and resumed reaches every later checkpoint with
bit-identical weights (fp32 on CPU). ``output.checkpoint_every`` adds checkpoints
inside an epoch; SIGINT/SIGTERM write one at the next optimizer step and stop
(:class:`RunInterrupted`).

Never kept: a checkpoint with non-finite trainable weights or optimizer state, and a
``best.pt`` chosen by a validation with non-finite outputs. A non-finite loss or
gradient stops the run before the update (:class:`NonFiniteLossError`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from tdsk import _io
from tdsk._logging import logger
from tdsk.engine import checkpoint as C
from tdsk.engine import distributed as D
from tdsk.engine import rundir as R
from tdsk.engine.evaluation import EvalResult, evaluate
from tdsk.engine.metrics import MetricsLogger, plot_curves
from tdsk.engine.optim import WarmupCosine, build_criterion, build_optimizer
from tdsk.engine.precision import autocast_for, resolve_precision
from tdsk.engine.resume import (HARMLESS_KEYS, _check_recipe_unchanged, _open_run_dir,  # noqa: F401
                                 _pending_validation_from_metrics, _restore, _take_lock, config_changes)
from tdsk.engine.resume import NonFiniteLossError, _non_finite_state, _save_checkpoint, _validation_due  # noqa: F401
from tdsk.engine.stop import _StopFlag
from tdsk.data.mixup import MixupCutmix
from tdsk.models.registry import logits_of, loss_of, param_groups_of
from tdsk.schema import ConfigError, Recipe, validate_recipe

__all__ = ["NonFiniteLossError", "RunInterrupted", "RunResult", "fit", "resolve_precision", "autocast_for",
           "build_model", "config_changes", "HARMLESS_KEYS"]


class RunInterrupted(Exception):
    """SIGINT/SIGTERM: the run wrote ``checkpoint`` and stopped (continue with ``--resume auto``)."""

    def __init__(self, checkpoint: str | None, signum: int):
        name = signal.Signals(signum).name if signum in set(signal.Signals) else f"signal {signum}"
        super().__init__(f"interrupted by {name}; checkpoint {checkpoint}")
        self.checkpoint, self.signum = checkpoint, signum


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


# ----------------------------------------------------------------------------- building

def build_model(cfg: Mapping, variant: str | None = None, num_classes: int | None = None,
                class_names: Sequence[str] | None = None) -> nn.Module:
    """``tdsk.models.build_model`` on the recipe (+ variant/classes). ``class_names``
    default to the recipe's ``data.labels`` (a text-classifier family needs them)."""
    from tdsk import models

    section = dict(cfg["model"])
    if variant is not None:
        section["variant"] = variant
    if num_classes is not None:
        section["num_classes"] = int(num_classes)
    return models.build_model({**cfg, "model": section}, class_names=class_names)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _gpu_memory(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"


def _format_output_dir(cfg: Mapping) -> str:
    out = (cfg.get("output") or {}).get("dir") or "runs/{name}"
    name = (cfg.get("_meta") or {}).get("name", "run")
    return os.path.expanduser(str(out).format(name=name))


# ----------------------------------------------------------------------------- resume checks
# ----------------------------------------------------------------------------- run state

@dataclass
class _Run:
    """What the steps of :func:`fit` share."""

    cfg: Mapping
    recipe: Recipe
    info: D.DistInfo
    out_dir: str
    stop: _StopFlag
    progress: bool = True
    classes: Sequence[str] | None = None
    run_id: str = ""
    model: Any = None           # what is called (DDP / compiled wrapper)
    raw_model: Any = None       # the module whose state is saved
    optimizer: Any = None
    schedule: Any = None
    scaler: Any = None
    criterion: Any = None
    mixup: Any = None           # tdsk.data.mixup.MixupCutmix or None
    precision: str = "fp32"
    frozen_info: dict = field(default_factory=dict)
    tower: set = field(default_factory=set)  # the frozen CLIP tower's parameter names
    train_loader: Any = None
    val_loader: Any = None
    metrics: MetricsLogger | None = None
    manifest: R.Manifest | None = None
    epoch: int = 0              # epochs done
    iteration: int = 0          # iterations done inside epoch ``epoch`` (mid-epoch resume)
    epoch_sums: Any = None      # running loss*clips, correct, clips of that partial epoch
    step: int = 0               # iterations done in the whole run
    best: dict = field(default_factory=lambda: {"val_top1": None, "epoch": None})
    last_path: str | None = None
    resumed_from: str | None = None
    validate_pending: bool = False

    @property
    def device(self) -> torch.device:
        return self.info.device


def _build(run: _Run, model: nn.Module | None, resuming: bool = False) -> None:
    """Model (same seed on every rank), optimiser groups, LR schedule, GradScaler, loss."""
    rc, info = run.recipe, run.info
    # The model is built from the same seed on every rank (a randomly initialised frozen
    # tower must be identical everywhere: DDP only synchronises what it trains); the
    # official per-rank seed 1024 + rank is set after that.
    _seed_everything(rc.train.seed)
    if rc.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if model is None:
        model = build_model(run.cfg, class_names=run.classes)  # fit() put a variant override into the recipe
    model.to(run.device)
    _seed_everything(rc.train.seed + info.rank)  # official: 1024 + rank (torch and numpy)
    run.frozen_info = C.frozen_identity(model, rc.model.clip_pretrained if "model" in run.cfg else None)
    run.tower = set(C.frozen_parameter_names(model))
    if rc.train.init_from and not resuming:
        from tdsk.engine.finetune import init_from

        # weights only (optimizer/schedule fresh). The frozen tower stays the one of
        # model.clip_pretrained when checkpoints recreate it from there.
        init_from(model, os.path.expanduser(rc.train.init_from),
                  keep=() if run.frozen_info["weights_included"] else run.tower)
        if run.frozen_info["weights_included"]:
            run.frozen_info = C.frozen_identity(model, rc.model.clip_pretrained)
    if rc.train.freeze:
        from tdsk.engine.finetune import freeze

        freeze(model, rc.train.freeze)
    if rc.train.sync_bn and info.enabled:
        if getattr(rc.model, "recompute_cheap", False) or getattr(rc.model, "side_checkpoint", False):
            raise ConfigError(
                "train.sync_bn=true needs model.recompute_cheap=false and model.side_checkpoint=false: "
                "a recompute segment would all-reduce and update the BatchNorm statistics again in backward")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run.raw_model = run.model = model
    try:
        run.precision, _reason = resolve_precision(rc.train.precision, run.device, key="train.precision")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if run.precision == "fp16" and run.device.type == "cpu":
        logger.warning("train.precision=fp16 on CPU is slow and poorly supported; consider bf16 or fp32")
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    solver = dataclasses.asdict(rc.solver)
    run.optimizer = build_optimizer(model, solver, groups=param_groups_of(model, solver))
    run.schedule = WarmupCosine(run.optimizer, rc.solver.lr, rc.solver.epochs, rc.solver.warmup_epochs,
                                rc.solver.final_lr_factor, rc.solver.lr_step_every, rc.solver.schedule)
    run.criterion = build_criterion(solver)
    # mixup / cutmix (data.mixup_alpha, data.cutmix_alpha): soft targets, drawn per (seed, rank, epoch, step)
    run.mixup = MixupCutmix.from_data_config(rc.data, int(model.num_classes), seed=rc.train.seed, rank=info.rank)


def _build_loaders(run: _Run, loader_factory: Callable | None) -> None:
    rc, info = run.recipe, run.info
    if loader_factory is None:
        from tdsk.data import build_loader as loader_factory
    kwargs = dict(device=run.device, num_workers=rc.train.num_workers, rank=info.rank, world_size=info.world_size,
                  seed=rc.train.seed)
    run.train_loader = loader_factory(run.cfg["data"], "train", batch_size=rc.train.batch_size, **kwargs)
    run.val_loader = None
    if rc.eval.validate and run.cfg["data"].get("val_list") is not None:
        run.val_loader = loader_factory(run.cfg["data"], "val", batch_size=rc.eval.batch_size or rc.train.batch_size,
                                        **kwargs)
    _check_labels(run.raw_model, run.cfg["data"], (("train", run.train_loader), ("val", run.val_loader)))


def _check_labels(model: nn.Module, data_cfg: Mapping, loaders) -> None:
    """A list label >= model.num_classes would fail deep in the loss (or as a CUDA assert): say so now."""
    num_classes = getattr(model, "num_classes", None)
    for split, loader in loaders:
        records = getattr(getattr(loader, "dataset", None), "records", None)
        if not num_classes or not records:
            continue
        worst = max(records, key=lambda r: r.label)
        if worst.label >= num_classes:
            from tdsk.data.lists import ListFormatError

            raise ListFormatError(
                f"{data_cfg.get(f'{split}_list')}:{worst.line}: label {worst.label} but model.num_classes="
                f"{num_classes} (labels must be 0..{num_classes - 1}); is this the list of another dataset?"
            )


def _open_metrics(run: _Run, n_train: int, n_frozen: int) -> None:
    """Rank 0: the append-only metrics file (with a start/resume marker) and config.yaml."""
    if not run.info.is_main:
        return
    import yaml

    os.makedirs(run.out_dir, exist_ok=True)
    run.metrics = MetricsLogger(run.out_dir, tensorboard=run.recipe.train.tensorboard)
    if run.resumed_from:
        run.metrics.log("resume", run.step, epoch=run.epoch, iteration=run.iteration, checkpoint=run.resumed_from,
                        run_id=run.run_id)
    else:
        run.metrics.log("start", 0, run_id=run.run_id)
    _io.write_text(os.path.join(run.out_dir, "config.yaml"),
                   yaml.safe_dump(C.plain({k: v for k, v in run.cfg.items()}), sort_keys=False))
    run.manifest = R.Manifest(run.out_dir, run.run_id)
    logger.info(
        f"training {(run.cfg.get('_meta') or {}).get('name', '')} on {run.device} x{run.info.world_size} "
        f"({run.precision}); {n_train:,} trainable / {n_frozen:,} frozen parameters; "
        f"{len(run.train_loader)} iterations/epoch x {run.recipe.solver.epochs - run.epoch} epoch(s); "
        f"run dir {run.out_dir}")


# ----------------------------------------------------------------------------- one epoch

def _skip_batches(loader, n: int) -> Any:
    """An iterator over ``loader`` starting at batch ``n`` (a mid-epoch resume)."""
    sampler = getattr(loader, "sampler", None)
    batch = getattr(loader, "batch_size", None) or getattr(getattr(loader, "loader", None), "batch_size", None)
    if n and hasattr(sampler, "skip") and batch:
        sampler.skip(n * batch)  # the same batches as the uninterrupted pass, without decoding the first n
        return iter(loader)
    if n and hasattr(loader, "skip_batches"):
        loader.skip_batches(n)
        return iter(loader)
    it = iter(loader)
    for _ in range(n):
        next(it)
    return it


def _optimizer_step(run: _Run, where: str) -> None:
    """Unscale, check the gradient is finite (fp16: the GradScaler skips such steps), clip, step."""
    params = [p for p in run.raw_model.parameters() if p.grad is not None]
    clip = run.recipe.solver.grad_clip
    if clip:
        run.scaler.unscale_(run.optimizer)
        norm = nn.utils.clip_grad_norm_(params, float(clip))
    elif not run.scaler.is_enabled():
        norm = nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    if not run.scaler.is_enabled() and not bool(torch.isfinite(norm)):
        raise NonFiniteLossError(f"gradient norm is {float(norm)} at {where}; stopping before this update",
                                 run.last_path)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _train_epoch(run: _Run, epoch: int) -> int | None:
    """Train epoch ``epoch`` (0-based) from ``run.iteration``; returns the iteration at which a
    signal stopped it (a checkpoint was written), or None when the epoch is complete."""
    from tqdm.auto import tqdm

    rc, info, loader = run.recipe, run.info, run.train_loader
    loader.set_epoch(epoch)
    n_iter = len(loader)
    if rc.train.limit_train_batches:
        n_iter = min(n_iter, rc.train.limit_train_batches)
    start, run.iteration = run.iteration, 0
    sums = run.epoch_sums if (start and run.epoch_sums is not None) else torch.zeros(3, dtype=torch.float64)
    window, window_t0, epoch_t0 = torch.zeros(3, dtype=torch.float64), time.time(), time.time()
    accum, every = rc.solver.grad_accumulation, rc.output.checkpoint_every
    autocast = autocast_for(run.precision, run.device)
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=n_iter, initial=start, desc=f"epoch {epoch + 1}/{rc.solver.epochs}", unit="it",
               dynamic_ncols=True, leave=False, disable=not (run.progress and info.is_main))
    checkpoint_due = False
    for i, (video, labels) in enumerate(_skip_batches(loader, start), start):
        if i >= n_iter:
            break
        where = f"epoch {epoch + 1} iteration {i + 1} (global step {run.step + 1})"
        if run.schedule.should_step(i):
            run.schedule.step(epoch + i / n_iter)
        sync_now = (i + 1) % accum == 0 or i + 1 == n_iter
        no_sync = run.model.no_sync() if (info.enabled and not sync_now and hasattr(run.model, "no_sync")) \
            else contextlib.nullcontext()
        targets = labels
        if run.mixup is not None:
            video, targets = run.mixup(video, labels, epoch, i)
        with no_sync:
            with autocast:
                outputs = run.model(video)
            logits = logits_of(run.raw_model, outputs)
            loss = loss_of(run.raw_model, outputs, targets, run.criterion)
            # one host sync per iteration: loss, accuracy, clips and "a rank got a signal"
            stats = torch.stack([loss.detach().double() * labels.shape[0],
                                 (logits.detach().argmax(-1) == labels).sum().double(),
                                 torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=loss.device),
                                 torch.tensor(float(run.stop.signum), dtype=torch.float64, device=loss.device)])
            stats = D.all_reduce_sum(stats, info).cpu()
            mean_loss = float(stats[0] / stats[2])
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(f"loss is {mean_loss} at {where}; stopping before this update",
                                         run.last_path)
            run.scaler.scale(loss / accum).backward()
        if sync_now:
            _optimizer_step(run, where)
        run.step += 1
        sums += stats[:3]
        window += stats[:3]
        bar.update()
        if info.is_main and ((i + 1) % rc.train.log_every == 0 or i + 1 == n_iter):
            dt = max(time.time() - window_t0, 1e-9)
            rec = dict(epoch=epoch, epoch_float=epoch + (i + 1) / n_iter, loss=float(window[0] / window[2]),
                       top1=float(window[1] / window[2]), lr=run.schedule.lr, clips_per_s=float(window[2]) / dt)
            mem = _gpu_memory(run.device)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}",
                            clips_s=f"{rec['clips_per_s']:.1f}", **({"mem": mem} if mem else {}))
            run.metrics.log("train", run.step, **rec)
            window.zero_()
            window_t0 = time.time()
        checkpoint_due = checkpoint_due or bool(every and run.step % every == 0)
        stop = stats[3] > 0
        if sync_now and (stop or checkpoint_due) and i + 1 < n_iter:
            checkpoint_due = False
            run.epoch_sums = sums
            _save_checkpoint(run, epoch, i + 1, sums)
            if stop:
                bar.close()
                return i + 1
    bar.close()
    run.epoch_sums = sums
    _log_epoch(run, epoch, sums, time.time() - epoch_t0)
    return None


def _log_epoch(run: _Run, epoch: int, sums: torch.Tensor, seconds: float) -> None:
    if not run.info.is_main:
        return
    rec = dict(epoch=epoch, train_loss=float(sums[0] / max(sums[2], 1)), train_top1=float(sums[1] / max(sums[2], 1)),
               lr=run.schedule.lr, epoch_seconds=seconds, clips_per_s=float(sums[2]) / max(seconds, 1e-9))
    mem = _gpu_memory(run.device)
    if mem:
        rec["gpu_max_memory"] = mem
    bad = getattr(run.train_loader, "bad_samples", None)
    if bad is not None and getattr(bad, "num_bad", 0):
        rec["bad_samples"] = int(bad.num_bad)
    # The epoch record goes before the checkpoint: after a kill in between, resuming from
    # the previous checkpoint supersedes it (read_metrics), never a gap.
    run.metrics.log("epoch", run.step, **rec)
    logger.info(f"epoch {epoch + 1}/{run.recipe.solver.epochs}: loss {rec['train_loss']:.4f}, "
                f"train top-1 {100 * rec['train_top1']:.1f}% ({seconds:.1f} s)")


# ----------------------------------------------------------------------------- checkpoints

def _validate(run: _Run, epoch: int, state_path: str) -> EvalResult | None:
    """Validate after epoch ``epoch`` (its checkpoint ``state_path`` is already on disk);
    copy it to ``best.pt`` when top-1 improved and every output was finite."""
    if not _validation_due(run, epoch):
        return None
    rc = run.recipe
    run.val_loader.set_epoch(epoch)
    res = evaluate(run.raw_model, run.val_loader, device=run.device,
                   autocast=autocast_for(run.precision, run.device), dist_info=run.info, progress=run.progress,
                   desc=f"val {epoch + 1}/{rc.solver.epochs}", limit_batches=rc.eval.limit_val_batches)
    eligible = res.is_finite
    improved = eligible and (run.best["val_top1"] is None or res.top1 > run.best["val_top1"])
    if run.info.is_main:
        run.metrics.log("val", run.step, epoch=epoch, val_top1=res.top1, val_top5=res.top5, val_loss=res.loss,
                        val_count=res.count, val_nonfinite=res.num_nonfinite, val_skipped=len(res.skipped),
                        eligible=eligible)
        msg = f"epoch {epoch + 1}/{rc.solver.epochs}: val top-1 {100 * res.top1:.2f}% top-5 {100 * res.top5:.2f}%" \
              f" ({res.count} videos)"
        if not eligible:
            msg += f"; {res.num_nonfinite} non-finite output(s): this epoch is not eligible for {C.BEST_NAME}"
        (logger.warning if not eligible else logger.info)(msg)
        if improved and rc.output.save_best:
            # same weights as the epoch file just written: copy its bytes, no second pickle
            C.atomic_copy(state_path, os.path.join(run.out_dir, C.BEST_NAME))
    if improved:
        run.best = {"val_top1": res.top1, "epoch": epoch}
    return res


# ----------------------------------------------------------------------------- fit

def fit(cfg: Mapping, *, resume: str | None = None, output_dir: str | None = None, overwrite: bool = False,
        resume_force: bool = False, model: nn.Module | None = None, variant: str | None = None,
        classes: Sequence[str] | None = None, progress: bool = True, dist_info: D.DistInfo | None = None,
        loader_factory: Callable | None = None) -> RunResult:
    """Train according to ``cfg``; returns where everything was written.

    Args:
        cfg: a recipe from :func:`tdsk.config.load_config` (validated again here).
        resume: ``None`` (fresh run), ``"auto"`` (newest readable checkpoint in the
            output directory, or a fresh run if there is none) or a checkpoint path.
        output_dir: run directory (default ``output.dir`` of the recipe).
        overwrite: delete an earlier run's checkpoints and metrics there instead of refusing.
        resume_force: resume even though the recipe changed in a way that alters the run.
        model: a pre-built model (default: ``tdsk.models.build_model(cfg["model"])``).
        variant: ``model.variant`` override (``"baseline"`` for the mean-pool baseline).
        classes: class names stored in the checkpoints (for ``tdsk.predict``).
        loader_factory: ``(data_cfg, split, **kwargs) -> loader`` replacing ``tdsk.data.build_loader``.

    Raises :class:`NonFiniteLossError` (loss, gradient or state not finite; every
    checkpoint on disk stays finite), :class:`RunInterrupted` (SIGINT/SIGTERM, after
    writing a checkpoint), :class:`tdsk.engine.rundir.RunDirError` (directory in use,
    earlier run there, nothing readable to resume) and :class:`ConfigError`.
    """
    from tdsk.data.custom import plan_dataset

    if variant is not None:  # part of the recipe the checkpoints store (a reloaded model is the one trained)
        cfg = {**cfg, "model": {**cfg["model"], "variant": variant}}
    validate_recipe(cfg)
    start_time = time.time()
    info = dist_info or D.init(validate_recipe(cfg).train.device)
    out_dir = os.path.expanduser(output_dir) if output_dir else _format_output_dir(cfg)
    lock = _take_lock(out_dir, info)
    try:
        # class names (data.labels) and lists derived from class folders (data.layout=folders):
        # planned in memory now, written only once the directory checks below have passed
        dataset = plan_dataset(cfg, out_dir)
        recipe = validate_recipe(cfg)
        if model is None and recipe.model.num_classes is None:
            raise ConfigError("model.num_classes is not set: give data.labels (labels.txt, one class name per "
                              "line) or model.num_classes=K")
        with _StopFlag() as stop:
            run = _Run(cfg=cfg, recipe=recipe, info=info, out_dir=out_dir, stop=stop, progress=progress,
                       classes=classes if classes is not None else dataset.names, run_id=R.new_run_id())
            ckpt = _open_run_dir(run, resume, overwrite, resume_force)
            if info.is_main:
                dataset.write()
            D.barrier(info)
            _build(run, model, resuming=ckpt is not None)
            if ckpt is not None:
                _restore(run, ckpt)
                del ckpt
            if info.enabled:
                ddp_kwargs = {"find_unused_parameters": recipe.train.find_unused_parameters}
                if run.device.type == "cuda":
                    ddp_kwargs["device_ids"] = [run.device.index]
                run.model = nn.parallel.DistributedDataParallel(run.model, **ddp_kwargs)
            if recipe.train.compile:
                run.model = torch.compile(run.model)
            _build_loaders(run, loader_factory)
            n_train = sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad)
            n_frozen = sum(p.numel() for p in run.raw_model.parameters() if not p.requires_grad)
            _open_metrics(run, n_train, n_frozen)
            try:
                result = _loop(run)
            finally:
                if run.metrics is not None:
                    run.metrics.close()
    finally:
        if lock is not None:
            lock.release()
    result.seconds = time.time() - start_time
    _finish(run, result)
    return result


def _agreed_stop(run: _Run) -> int:
    """The signal number if any rank got SIGINT/SIGTERM (one collective on every rank), else 0."""
    local = float(run.stop.signum)
    if run.info.enabled:
        local = float(D.all_reduce_sum(torch.tensor([local], dtype=torch.float64, device=run.device), run.info).item())
    return (run.stop.signum or int(signal.SIGTERM)) if local > 0 else 0


def _loop(run: _Run) -> RunResult:
    """Epochs from where the run stands: train, checkpoint, validate; stop cleanly on a signal."""
    result = RunResult(out_dir=run.out_dir, metrics=os.path.join(run.out_dir, "metrics.jsonl"))
    result.last_checkpoint = run.resumed_from
    run.last_path = run.resumed_from
    _pending_validation_from_metrics(run)
    if run.validate_pending:  # the run stopped between an epoch's checkpoint and its validation
        result.val = _validate(run, run.epoch - 1, run.resumed_from) or result.val
    for epoch in range(run.epoch, run.recipe.solver.epochs):
        stopped_at = _train_epoch(run, epoch)
        if stopped_at is not None:
            raise RunInterrupted(run.last_path, run.stop.signum or int(signal.SIGTERM))
        path = _save_checkpoint(run, epoch, 0, None)
        result.last_checkpoint = path
        signum = _agreed_stop(run)  # a signal during the last step or the checkpoint, on any rank
        if signum:
            raise RunInterrupted(path, signum)
        res = _validate(run, epoch, path)
        result.val = res or result.val
        if run.info.is_main:
            rec = {"epoch": epoch, "train_loss": float(run.epoch_sums[0] / max(run.epoch_sums[2], 1))}
            if res is not None:
                rec.update(val_top1=res.top1, val_top5=res.top5, val_loss=res.loss)
            result.history.append(rec)
        result.epochs_done = epoch + 1
        D.barrier(run.info)
    result.epochs_done = max(result.epochs_done, run.epoch)
    return result


def _finish(run: _Run, result: RunResult) -> None:
    result.steps_done = run.step
    best_path = os.path.join(run.out_dir, C.BEST_NAME)
    result.best_checkpoint = best_path if os.path.exists(best_path) else None
    result.best_val_top1 = run.best.get("val_top1")
    if run.info.is_main:
        result.tensorboard = os.path.join(run.out_dir, "tensorboard") if run.recipe.train.tensorboard else None
        if run.recipe.output.plot and os.path.exists(result.metrics):
            try:
                result.curves = plot_curves(result.metrics, os.path.join(run.out_dir, "curves.png"),
                                            title=(run.cfg.get("_meta") or {}).get("name"))
            except Exception as exc:  # plotting must never lose a finished run
                logger.warning(f"could not draw the curves: {exc}")
