"""A run's state on disk (docs/recipe.md): saving checkpoints (atomically, never non-finite
weights), and starting or resuming a run: the run directory and its lock, the checks that a
resumed run is the same experiment (recipe unchanged but for harmless keys), and restoring its
state (model, optimizer, schedule, RNG, a validation the previous run owed). Functions of the
trainer's run state (``run``: :class:`tdsk.engine.trainer._Run`)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from typing import Any, Mapping

import torch
import torch.nn as nn

from tdsk._logging import logger
from tdsk.engine import checkpoint as C
from tdsk.engine import distributed as D
from tdsk.engine import rundir as R
from tdsk.engine.metrics import read_metrics
from tdsk.schema import ConfigError, Recipe, validate_recipe


class NonFiniteLossError(FloatingPointError):
    """The loss, a gradient or the trained state became NaN/inf; the run stopped before
    using it. ``last_checkpoint``: the newest checkpoint on disk (all finite), or None."""

    def __init__(self, message: str, last_checkpoint: str | None = None):
        super().__init__(message)
        self.last_checkpoint = last_checkpoint



# Keys whose change does not alter what a resumed run computes: allowed, and logged.
HARMLESS_KEYS = ("train.num_workers", "train.log_every", "train.tensorboard", "train.compile", "train.device",
                 "train.find_unused_parameters", "data.num_workers", "data.decode_threads", "eval.", "output.")


def _normalised(cfg: Mapping) -> dict:
    """The recipe with every default filled in, flattened (``solver.lr`` -> value)."""
    from tdsk.config import flatten

    try:
        recipe = validate_recipe(cfg)
        full = {f.name: dataclasses.asdict(getattr(recipe, f.name)) for f in dataclasses.fields(Recipe)}
    except ConfigError:  # a recipe an older tdsk wrote: compare what it says
        full = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    return flatten(full)


def config_changes(saved: Mapping, new: Mapping) -> tuple[list[str], list[str]]:
    """``(altering, harmless)``: ``"key: old -> new"`` for each value that differs."""
    a, b = _normalised(saved), _normalised(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    lines = {k: f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in changed}
    harmless = [lines[k] for k in changed if k.startswith(HARMLESS_KEYS)]
    return [lines[k] for k in changed if not k.startswith(HARMLESS_KEYS)], harmless


def _open_run_dir(run: Any, resume: str | None, overwrite: bool, resume_force: bool) -> dict | None:
    """Clean up, decide fresh start or resume, and read the resume checkpoint (once).

    Runs after the lock is held. Returns the checkpoint to restore, or None.
    """
    out_dir, info = run.out_dir, run.info
    if info.is_main:
        R.remove_stale_temporaries(out_dir)
    D.barrier(info)
    ckpt = None
    if resume == "auto":
        run.resumed_from, ckpt, _ = R.find_resume(out_dir)
        if ckpt is None and info.is_main:
            logger.info(f"--resume auto: no checkpoint in {out_dir}; starting a fresh run")
    elif resume:
        if not os.path.isfile(resume):
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        ckpt = C.load(resume, map_location="cpu")
        if not C.is_training_checkpoint(ckpt):
            raise ValueError(f"{resume} is not a tdsk training checkpoint (to fine-tune from official "
                             "weights, use train.init_from instead of resuming)")
        run.resumed_from = resume
        # Checkpoints in the run directory beyond the resumed one belong to another
        # timeline: continuing would mix the two (and --resume auto would pick them later).
        here = (int(ckpt["epoch"]), int((ckpt.get("epoch_progress") or {}).get("iteration", 0)))
        newer = [p for key, p in R.checkpoint_files(out_dir)
                 if key > here and os.path.abspath(p) != os.path.abspath(resume)]
        if newer and not overwrite:
            raise R.RunDirError(f"--resume {resume}: {out_dir} already holds later checkpoints "
                                f"({R.describe([(None, p) for p in newer])}) of another run or an abandoned "
                                "continuation. Resume into another --output, or pass --overwrite to delete them.")
        if newer and info.is_main:
            for p in newer:
                os.remove(p)
            logger.warning(f"--overwrite: deleted {len(newer)} later checkpoint(s): {R.describe([(None, p) for p in newer])}")
    if ckpt is not None:
        _check_recipe_unchanged(run, ckpt, resume_force)
        return ckpt
    existing = R.checkpoint_files(out_dir)
    # --resume auto with no checkpoint continues an append-only metrics file; a best.pt
    # without checkpoints, or any earlier file on a plain fresh start, is another run's.
    others = [n for n in (C.BEST_NAME, "metrics.jsonl") if os.path.exists(os.path.join(out_dir, n))
              and not (resume == "auto" and n == "metrics.jsonl")]
    if (existing or others) and not overwrite:
        what = R.describe(existing) or ", ".join(others)
        raise R.RunDirError(f"{out_dir} already holds files of an earlier run ({what}). Continue it with "
                            "--resume auto, start over with --overwrite (deletes them), or choose another "
                            "output.dir=...")
    if overwrite and info.is_main:
        for _, p in existing:
            os.remove(p)
        for name in (C.BEST_NAME, "metrics.jsonl", R.MANIFEST_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
        shutil.rmtree(os.path.join(out_dir, "tensorboard"), ignore_errors=True)
    D.barrier(info)
    return None


def _check_recipe_unchanged(run: Any, ckpt: Mapping, force: bool) -> None:
    saved = C.stored_recipe(ckpt)
    altering, harmless = config_changes(saved, run.cfg)
    saved_world = int(ckpt.get("world_size") or 1)
    if saved_world != run.info.world_size:
        if (ckpt.get("epoch_progress") or {}).get("iteration"):
            raise ConfigError(f"{run.resumed_from} is a mid-epoch checkpoint of {saved_world} process(es); it can "
                              f"only be resumed with {saved_world} (this run has {run.info.world_size}): each rank's "
                              "share of the epoch depends on it. Resume from an epoch checkpoint to change it.")
        altering.append(f"world size (processes): {saved_world} -> {run.info.world_size} "
                        "(the effective batch changes)")
    if altering and not force:
        raise ConfigError(
            f"{run.resumed_from} was trained with another recipe; resuming would change the run:\n  "
            + "\n  ".join(altering) + "\nResume with the recipe it was trained with, or pass --resume-force "
            "to continue with the new values anyway.")
    if run.info.is_main:
        for line in altering:
            logger.warning(f"--resume-force: continuing with a changed recipe: {line}")
        for line in harmless:
            logger.info(f"resuming with a changed setting (does not alter the run): {line}")


def _restore(run: Any, ckpt: Mapping) -> None:
    """Weights, optimiser, schedule, scaler, counters and RNG from a checkpoint read once."""
    C.load_model_state(run.raw_model, ckpt)
    run.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    progress = ckpt.get("epoch_progress") or {}
    run.iteration = int(progress.get("iteration", 0))
    run.epoch_sums = torch.tensor(progress["sums"], dtype=torch.float64) if run.iteration else None
    run.best = dict(ckpt.get("best") or run.best)
    run.run_id = ckpt.get("run_id") or R.new_run_id()
    rng = ckpt["rng"]
    if run.info.rank:  # every rank stores its own stream under rng_rank<k>
        rng = ckpt.get(f"rng_rank{run.info.rank}", rng)
    C.set_rng_state(rng)
    run.validate_pending = bool(ckpt.get("validation_pending")) and run.iteration == 0
    if run.info.is_main:
        where = f", {run.iteration} iteration(s) into epoch {run.epoch + 1}" if run.iteration else ""
        logger.info(f"resumed from {run.resumed_from}: {run.epoch} epoch(s){where}, {run.step} step(s) done")


def _pending_validation_from_metrics(run: Any) -> None:
    """After an epoch-boundary resume: the best so far and whether that epoch's validation ran
    (rank 0 reads the metrics; every rank gets its answer, so all ranks agree on ``best``)."""
    if not run.validate_pending:
        return
    # [validation still pending, has a best, best top-1, best epoch]: zeros on the other ranks
    shared = torch.zeros(4, dtype=torch.float64)
    path = os.path.join(run.out_dir, "metrics.jsonl")
    if run.info.is_main:
        records = read_metrics(path) if os.path.exists(path) else []
        vals = [r for r in records if r.get("kind") == "val" and r.get("epoch", -1) < run.epoch]
        for r in vals:
            top1 = r.get("val_top1")
            if r.get("eligible") and isinstance(top1, float) and (run.best["val_top1"] is None or top1 > run.best["val_top1"]):
                run.best = {"val_top1": top1, "epoch": r["epoch"]}
        shared[0] = 0.0 if any(r["epoch"] == run.epoch - 1 for r in vals) else 1.0
        if run.best["val_top1"] is not None:
            shared[1:] = torch.tensor([1.0, float(run.best["val_top1"]), float(run.best["epoch"])], dtype=torch.float64)
    shared = D.all_reduce_sum(shared.to(run.device), run.info).cpu()
    run.validate_pending = bool(shared[0].item() > 0)
    if shared[1].item() > 0:
        run.best = {"val_top1": float(shared[2].item()), "epoch": int(shared[3].item())}


def _take_lock(out_dir: str, info: D.DistInfo):
    """Rank 0 takes the run lock; every rank learns whether it did (no rank left in a collective)."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = R.RunLock(out_dir).acquire()
        except R.RunDirError as exc:
            error = exc
    if info.enabled:
        flag = D.all_reduce_sum(torch.tensor([0.0 if error is None else 1.0], device=info.device), info)
        if error is None and float(flag.item()) > 0:
            raise R.RunDirError(f"{out_dir}: rank 0 could not take the run lock (see its message)")
    if error is not None:
        raise error
    return lock


def _non_finite_state(run: Any) -> list[str]:
    """Names of trainable parameters, (persistent) buffers and optimizer-state tensors that are not finite."""
    bad = [n for n, t in list(run.raw_model.named_parameters()) + C.persistent_buffers(run.raw_model)
           if (t.requires_grad or not isinstance(t, nn.Parameter)) and t.is_floating_point()
           and not bool(torch.isfinite(t).all())]
    for pid, state in run.optimizer.state_dict()["state"].items():
        bad += [f"optimizer[{pid}].{k}" for k, v in state.items()
                if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return bad


def _save_checkpoint(run: Any, epoch: int, iteration: int, sums: torch.Tensor | None) -> str:
    """Write ``epoch_N.pt`` (``iteration == 0``: ``epoch`` epochs done) or a mid-epoch
    checkpoint ``iteration`` iterations into epoch ``epoch``; all ranks call it."""
    info = run.info
    epochs_done = epoch if iteration else epoch + 1
    bad = _non_finite_state(run)
    flag = D.all_reduce_sum(torch.tensor([float(len(bad))], dtype=torch.float64, device=run.device), info)
    if bad or float(flag.item()) > 0:
        raise NonFiniteLossError(
            f"the trained state is not finite after global step {run.step} ({', '.join(bad[:5]) or 'on another rank'}"
            f"{'...' if len(bad) > 5 else ''}); not writing a checkpoint", run.last_path)
    rng_states = [C.rng_state()]
    if info.enabled:
        rng_states = [None] * info.world_size
        torch.distributed.all_gather_object(rng_states, C.rng_state())
    path = os.path.join(run.out_dir, R.checkpoint_name(epochs_done, iteration))
    if info.is_main:
        state = {
            "format": C.FORMAT,
            "run_id": run.run_id,
            "model_state_dict": C.trainable_state_dict(run.raw_model, include_frozen=run.frozen_info["weights_included"],
                                                       tower=run.tower),
            "optimizer_state_dict": run.optimizer.state_dict(),
            "scheduler": run.schedule.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "epoch": epochs_done,
            "step": run.step,
            "epoch_progress": {"iteration": iteration, "sums": sums.tolist()} if iteration else None,
            "validation_pending": not iteration and _validation_due(run, epoch),
            "rng": rng_states[0],
            "frozen": run.frozen_info,
            "best": dict(run.best),
            "config": C.plain({k: v for k, v in run.cfg.items()}),
            "classes": list(run.classes) if run.classes else None,
            "precision": run.precision,
            "world_size": info.world_size,
        }
        for r in range(1, len(rng_states)):
            state[f"rng_rank{r}"] = rng_states[r]
        C.atomic_save(state, path)
        run.manifest.add(path)
        run.manifest.prune(run.recipe.output.keep_last, newest=path)
        del state
    run.last_path = path
    D.barrier(info)
    return path


def _validation_due(run: Any, epoch: int) -> bool:
    rc = run.recipe
    return run.val_loader is not None and (epoch not in set(rc.eval.skip_epochs) or epoch == rc.solver.epochs - 1)
