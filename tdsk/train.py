"""Train TDS-CLIP: ``python -m tdsk.train --cfg ssv1_b16 [key=value ...]``.

With no arguments at all, runs the embedded demo: it generates a small motion
dataset from real video (see :mod:`tdsk.demo`), trains a tiny-CLIP TDS model and a
frozen-CLIP mean-pool baseline the same way on the CPU, and prints both accuracies.

Examples::

    python -m tdsk.train                                   # the demo (~2-3 min on 2 CPU cores)
    python -m tdsk.train --cfg ssv1_b16 data.root=/data/ssv1 \\
        data.train_list=/data/ssv1/train.txt data.val_list=/data/ssv1/val.txt
    python -m tdsk.train --cfg ssv1_b16 --resume auto      # continue the newest checkpoint
    torchrun --nproc_per_node 8 -m tdsk.train --cfg ssv1_b16 ...   # 8 GPUs, DDP
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence


__all__ = ["main", "run_demo", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from tdsk.config import available_configs

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
    p.add_argument("--variant", choices=["tds_clip", "baseline"], help="model.variant (baseline = frozen-CLIP mean-pool)")
    p.add_argument("--demo", action="store_true", help="run the embedded demo (what no arguments does)")
    p.add_argument("--demo-cache", metavar="DIR", help="where the demo dataset is generated (default ~/.cache/tdsk/demo)")
    p.add_argument("--no-baseline", action="store_true", help="demo: skip the mean-pool baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


# ----------------------------------------------------------------------------- the demo

def demo_config(root: str, overrides: Sequence[str] = ()) -> dict:
    """The ``demo`` recipe pointed at a generated demo dataset."""
    from tdsk import demo
    from tdsk.config import apply_overrides, load_config

    cfg = load_config("demo")
    data = cfg["data"]
    data.update(root=root, train_list=os.path.join(root, "train.txt"), val_list=os.path.join(root, "val.txt"),
                test_list=os.path.join(root, "val.txt"))
    if cfg["model"]["num_classes"] != len(demo.CLASSES):
        raise ValueError(f"demo.yaml: model.num_classes must be {len(demo.CLASSES)} (tdsk.demo.CLASSES)")
    data.setdefault("num_segments", cfg["model"].get("num_segments", 8))
    data.setdefault("num_local", cfg["model"].get("num_local", 5))
    meta = cfg.pop("_meta")
    cfg = apply_overrides(cfg, overrides)
    cfg["_meta"] = {**meta, "overrides": list(overrides)}
    return cfg


def run_demo(overrides: Sequence[str] = (), *, cache: str | None = None, output: str | None = None,
             baseline: bool = True, progress: bool = True, spec=None) -> dict:
    """Generate the demo data, train TDS and the baseline, look at where they looked (CAM hit
    rate, an explain picture) and run a timeline over joined held-out clips; print and return
    the scores. ``spec``: a :class:`tdsk.demo.DemoSpec` (default the standard demo)."""
    import torch

    from tdsk import demo
    from tdsk.engine.trainer import fit

    t0 = time.time()
    threads = torch.get_num_threads()
    root = demo.generate(spec, cache_dir=cache, progress=progress)
    t_data = time.time() - t0
    cfg = demo_config(root, overrides)
    out = output or os.path.join((cfg.get("output") or {}).get("dir", "runs/demo").format(name="demo"))
    print(f"tdsk demo: dataset {root} ({t_data:.1f} s); training on {threads} CPU thread(s)", flush=True)
    runs = {}
    names = [("tds_clip", "TDS-CLIP")] + ([("baseline", "mean-pool baseline")] if baseline else [])
    for variant, title in names:
        t1 = time.time()
        res = fit(cfg, output_dir=os.path.join(out, variant), overwrite=True, variant=variant,
                  classes=demo.CLASSES, progress=progress, loader_factory=demo.MemoryClipLoader)
        runs[variant] = (res, time.time() - t1)
        print(f"tdsk demo: {title} trained in {time.time() - t1:.1f} s, val top-1 {100 * res.val.top1:.1f}%",
              flush=True)
    t2 = time.time()
    try:  # a failure here must not cost the report of two finished trainings
        after = demo.analyse(runs["tds_clip"][0].last_checkpoint, root, out, progress=progress,
                             baseline_checkpoint=runs["baseline"][0].last_checkpoint if baseline else None)
    except Exception as exc:  # noqa: BLE001 - reported, and the training results still follow
        print(f"tdsk demo: the after-training analysis failed ({type(exc).__name__}: {exc}); "
              "the training results follow", file=sys.stderr, flush=True)
        after = {"analysis_error": f"{type(exc).__name__}: {exc}"}
    t_after = time.time() - t2
    wall = time.time() - t0
    summary = {"wall_seconds": wall, "data_seconds": t_data, "analysis_seconds": t_after, "dataset": root,
               "runs": {}, **after}
    lines = ["", "tdsk demo results (held-out split, %d videos, %d classes; wall time %.0f s)"
             % (runs["tds_clip"][0].val.count, len(demo.CLASSES), wall)]
    header = f"  {'':22s}" + "".join(f"{t:>20s}" for _, t in names)
    lines.append(header)

    def row(label, values):
        lines.append(f"  {label:22s}" + "".join(f"{v:>20s}" for v in values))

    row("top-1", [f"{100 * runs[v][0].val.top1:.1f}%" for v, _ in names])
    row("top-5", [f"{100 * runs[v][0].val.top5:.1f}%" for v, _ in names])
    for a, b in demo.REVERSED_PAIRS:
        ia, ib = demo.CLASSES.index(a), demo.CLASSES.index(b)
        row(f"{a} vs {b}", [f"{100 * runs[v][0].val.pair_accuracy(ia, ib)[0]:.1f}%" for v, _ in names])
    if "cam" in after:
        row("CAM hit rate", [f"{100 * after['cam'][v]['hit_rate']:.1f}%" for v, _ in names])
    row("train time", [f"{runs[v][1]:.0f} s" for v, _ in names])
    lines.append("  (pairs: accuracy of telling a motion from its time reversal; chance is 50%)")
    if "cam" in after:
        cam = after["cam"]["tds_clip"]
        g = cam["grid"]
        lines.append(f"  (CAM hit rate: of the {cam['segments']} val segments, those whose class-activation peak, "
                     f"a cell of the {g}x{g} patch grid,\n   lies on the moving patch; a random cell hits "
                     f"{100 * cam['chance']:.1f}%, the cell of peak motion energy (the SME-Adapter's input) "
                     f"{100 * cam['motion_hit_rate']:.1f}%)")
    for variant, title in names:
        res = runs[variant][0]
        summary["runs"][variant] = {
            "top1": res.val.top1, "top5": res.val.top5, "seconds": runs[variant][1],
            "pairs": {f"{a}/{b}": res.val.pair_accuracy(demo.CLASSES.index(a), demo.CLASSES.index(b))[0]
                      for a, b in demo.REVERSED_PAIRS},
            "checkpoint": res.last_checkpoint, "metrics": res.metrics, "curves": res.curves,
        }
        lines.append(f"  {title}: checkpoint {res.last_checkpoint}")
        lines.append(f"  {' ' * len(title)}  metrics    {res.metrics}")
        if res.curves:
            lines.append(f"  {' ' * len(title)}  curves     {res.curves}")
    if "timeline" in after:
        lines += demo.report_lines(after)
    tds = runs["tds_clip"][0]
    lines.append("")
    lines.append("Next: python -m tdsk.evaluate --checkpoint %s --views 1x2" % tds.last_checkpoint)
    sample = os.path.join(root, "videos", "val", "left_0000.mp4")
    lines.append("      python -m tdsk.predict %s --checkpoint %s" % (sample, tds.last_checkpoint))
    print("\n".join(lines), flush=True)
    import json

    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
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
                     progress=not args.no_progress)
            return 0
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
