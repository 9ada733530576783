"""Train TDS-CLIP: ``python -m tdsk.train --cfg ssv1_b16 [key=value ...]``.

With no arguments at all, runs the embedded demo: it generates a small motion
dataset from real video (see :mod:`tdsk.demo`), trains a tiny-CLIP TDS model and a
frozen-CLIP mean-pool baseline the same way on the CPU, and prints both accuracies.

Examples::

    python -m tdsk.train                                   # the demo (~2-3 min on 2 CPU cores)
    python -m tdsk.train --model dist                      # the demo, DiST trained beside TDS-CLIP
    python -m tdsk.train --cfg ssv1_b16 data.root=/data/ssv1 \\
        data.train_list=/data/ssv1/train.txt data.val_list=/data/ssv1/val.txt
    python -m tdsk.train --cfg ssv1_b16 --resume auto      # continue the newest checkpoint
    torchrun --nproc_per_node 8 -m tdsk.train --cfg ssv1_b16 ...   # 8 GPUs, DDP
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


from tdsk.cli.demo.runner import demo_config, run_demo  # noqa: F401  (the demo runs from here; re-exported)

__all__ = ["main", "run_demo", "demo_config", "build_parser"]


def demo_models() -> list:
    """Families with a demo recipe (``tdsk/configs/demo_<model>.yaml``)."""
    from tdsk.config import available_configs

    return [n[len("demo_"):] for n in available_configs() if n.startswith("demo_")]


def build_parser() -> argparse.ArgumentParser:
    from tdsk.config import available_configs
    from tdsk.models.registry import families

    p = argparse.ArgumentParser(
        prog="python -m tdsk.train",
        description="Train TDS-CLIP with an official recipe (no arguments: run the embedded demo).",
        epilog="Overrides are dotted key=value pairs parsed as YAML, e.g. solver.epochs=1 "
               "train.precision=fp32 data.root=/data/ssv1. Multi-GPU: torchrun --nproc_per_node 8 -m tdsk.train ...",
    )
    p.add_argument("--cfg", help=f"recipe name ({', '.join(available_configs())}) or a YAML file path")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run: 'auto' = newest checkpoint in the run directory, or a checkpoint file")
    p.add_argument("--output", metavar="DIR", help="run directory (default: output.dir of the recipe, runs/<name>)")
    p.add_argument("--resume-force", action="store_true",
                   help="resume even though the recipe changed in a way that alters the run (model, data, solver, "
                        "batch size, seed, precision); the changed keys are logged")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that holds an earlier run (deletes its checkpoints and metrics)")
    p.add_argument("--variant", choices=sorted(families()),
                   help="model.variant (baseline = frozen-CLIP mean-pool; the recipe's model section must suit it)")
    p.add_argument("--demo", action="store_true", help="run the embedded demo (what no arguments does)")
    p.add_argument("--demo-cache", metavar="DIR", help="where the demo dataset is generated (default ~/.cache/tdsk/demo)")
    p.add_argument("--no-baseline", action="store_true", help="demo: skip the mean-pool baseline")
    p.add_argument("--model", action="append", default=[], choices=demo_models(),
                   help="demo: also train this family from its demo recipe (demo_<model>.yaml; e.g. --model dist) "
                        "and report it beside TDS-CLIP and the baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


# ----------------------------------------------------------------------------- the demo

def main(argv: Sequence[str] | None = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    from tdsk.config import ConfigError, DataNotFoundError, check_data_paths, load_config
    from tdsk.data.lists import ListFormatError
    from tdsk.data.loader import BadSampleError
    from tdsk.engine.rundir import RunDirError
    from tdsk.engine.trainer import NonFiniteLossError, RunInterrupted, fit

    try:
        if args.demo or not args.cfg:
            if args.cfg is None and (args.resume or args.variant or args.resume_force):
                parser.error("--resume/--resume-force/--variant need --cfg (the demo always starts fresh)")
            run_demo(args.overrides, cache=args.demo_cache, output=args.output, baseline=not args.no_baseline,
                     progress=not args.no_progress, models=args.model)
            return 0
        if args.model:
            parser.error("--model is a demo option (python -m tdsk.train --model dist); with --cfg choose the "
                         "recipe (e.g. --cfg ssv2_dist_b16)")
        cfg = load_config(args.cfg, args.overrides)
        check_data_paths(cfg, ("train", "val") if (cfg.get("eval") or {}).get("validate", True) else ("train",))
        # fit() reads the class names (data.labels) and derives lists from class folders
        # (data.layout=folders) once it holds the run directory
        result = fit(cfg, resume=args.resume, output_dir=args.output, overwrite=args.overwrite,
                     resume_force=args.resume_force, variant=args.variant, progress=not args.no_progress)
    except (ConfigError, DataNotFoundError, RunDirError, ListFormatError, BadSampleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        import signal

        resume_cmd = " ".join(["python -m tdsk.train", "--cfg", args.cfg or "<recipe>"]
                              + (["--output", args.output] if args.output else []) + list(args.overrides)
                              + ["--resume", "auto"])
        name = signal.Signals(exc.signum).name if exc.signum in set(signal.Signals) else f"signal {exc.signum}"
        print(f"stopped by {name}: checkpoint {exc.checkpoint}; continue with: "
              f"{resume_cmd}", file=sys.stderr)
        return 128 + int(exc.signum)
    except NonFiniteLossError as exc:
        last = exc.last_checkpoint
        print(f"error: {exc}\nThe last good checkpoint is {last or '(none: nothing was written yet)'}; "
              "lower solver.lr, try train.precision=fp32 or bf16, or set solver.grad_clip.", file=sys.stderr)
        return 3
    if result.out_dir and os.environ.get("RANK", "0") == "0":
        best = f"{100 * result.best_val_top1:.2f}%" if result.best_val_top1 is not None else "n/a"
        print(f"done: {result.epochs_done} epoch(s) in {result.seconds:.0f} s; best val top-1 {best}\n"
              f"  checkpoints  {result.out_dir} (last {result.last_checkpoint}, best {result.best_checkpoint})\n"
              f"  metrics      {result.metrics}\n  curves       {result.curves}\n"
              f"  tensorboard  {result.tensorboard}")
    from tdsk.engine import distributed as D

    D.shutdown(D.DistInfo(world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
