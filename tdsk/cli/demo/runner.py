"""The demo's runner: generate the data, train TDS-CLIP and the frozen-CLIP mean-pool baseline
the same way, analyse, print the table (``python -m tdsk.train`` with no arguments)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence


def demo_config(root: str, overrides: Sequence[str] = (), name: str = "demo") -> dict:
    """The ``demo`` recipe (or another demo recipe, e.g. ``demo_dist``) pointed at a generated
    demo dataset."""
    from tdsk.cli.demo import dataset
    from tdsk.config import apply_overrides, load_config

    cfg = load_config(name)
    data = cfg["data"]
    data.update(root=root, train_list=os.path.join(root, "train.txt"), val_list=os.path.join(root, "val.txt"),
                test_list=os.path.join(root, "val.txt"))
    if cfg["model"]["num_classes"] != len(dataset.CLASSES):
        raise ValueError(f"{name}.yaml: model.num_classes must be {len(dataset.CLASSES)} (tdsk.demo.CLASSES)")
    data.setdefault("num_segments", cfg["model"].get("num_segments", 8))
    data.setdefault("num_local", cfg["model"].get("num_local", 5))
    meta = cfg.pop("_meta")
    cfg = apply_overrides(cfg, overrides)
    cfg["_meta"] = {**meta, "overrides": list(overrides)}
    return cfg


def run_demo(overrides: Sequence[str] = (), *, cache: str | None = None, output: str | None = None,
             baseline: bool = True, progress: bool = True, spec=None, models: Sequence[str] = ()) -> dict:
    """Generate the demo data, train TDS and the baseline, look at where they looked (CAM hit
    rate, an explain picture) and run a timeline over joined held-out clips; print and return
    the scores. ``spec``: a :class:`tdsk.demo.DemoSpec` (default the standard demo).
    ``models``: more families to train beside them, each from its demo recipe
    ``demo_<model>`` (``dist``: ``demo_dist.yaml``), with the same ``overrides``."""
    import torch

    from tdsk.cli.demo import analysis, dataset, loader
    from tdsk.engine.trainer import fit

    t0 = time.time()
    threads = torch.get_num_threads()
    root = dataset.generate(spec, cache_dir=cache, progress=progress)
    t_data = time.time() - t0
    cfg = demo_config(root, overrides)
    out = output or os.path.join((cfg.get("output") or {}).get("dir", "runs/demo").format(name="demo"))
    print(f"tdsk demo: dataset {root} ({t_data:.1f} s); training on {threads} CPU thread(s)", flush=True)
    runs = {}
    names = [("tds_clip", "TDS-CLIP")] + ([("baseline", "mean-pool baseline")] if baseline else [])
    configs = {v: (cfg, v) for v, _ in names}
    for model in models:
        extra = demo_config(root, overrides, name=f"demo_{model}")
        variant = extra["model"]["variant"]
        names.append((variant, f"{variant} ({extra['_meta']['name']})"))
        configs[variant] = (extra, None)
    for variant, title in names:
        t1 = time.time()
        run_cfg, override = configs[variant]
        res = fit(run_cfg, output_dir=os.path.join(out, variant), overwrite=True, variant=override,
                  classes=dataset.CLASSES, progress=progress, loader_factory=loader.MemoryClipLoader)
        runs[variant] = (res, time.time() - t1)
        print(f"tdsk demo: {title} trained in {time.time() - t1:.1f} s, val top-1 {100 * res.val.top1:.1f}%",
              flush=True)
    t2 = time.time()
    try:  # a failure here must not cost the report of two finished trainings
        after = analysis.analyse(runs["tds_clip"][0].last_checkpoint, root, out, progress=progress,
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
             % (runs["tds_clip"][0].val.count, len(dataset.CLASSES), wall)]
    header = f"  {'':22s}" + "".join(f"{t:>20s}" for _, t in names)
    lines.append(header)

    def row(label, values):
        lines.append(f"  {label:22s}" + "".join(f"{v:>20s}" for v in values))

    row("top-1", [f"{100 * runs[v][0].val.top1:.1f}%" for v, _ in names])
    row("top-5", [f"{100 * runs[v][0].val.top5:.1f}%" for v, _ in names])
    for a, b in dataset.REVERSED_PAIRS:
        ia, ib = dataset.CLASSES.index(a), dataset.CLASSES.index(b)
        row(f"{a} vs {b}", [f"{100 * runs[v][0].val.pair_accuracy(ia, ib)[0]:.1f}%" for v, _ in names])
    if "cam" in after:
        row("CAM hit rate", [f"{100 * after['cam'][v]['hit_rate']:.1f}%" if v in after["cam"] else "-"
                             for v, _ in names])
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
            "pairs": {f"{a}/{b}": res.val.pair_accuracy(dataset.CLASSES.index(a), dataset.CLASSES.index(b))[0]
                      for a, b in dataset.REVERSED_PAIRS},
            "checkpoint": res.best_checkpoint or res.last_checkpoint, "last_checkpoint": res.last_checkpoint,
            "metrics": res.metrics, "curves": res.curves,
        }
        best = res.best_checkpoint or res.last_checkpoint
        lines.append(f"  {title}: checkpoint {best}" + (f" (best val top-1; last epoch: {os.path.basename(res.last_checkpoint)})"
                                                         if best != res.last_checkpoint else ""))
        lines.append(f"  {' ' * len(title)}  metrics    {res.metrics}")
        if res.curves:
            lines.append(f"  {' ' * len(title)}  curves     {res.curves}")
    if "timeline" in after:
        lines += analysis.report_lines(after)
    tds = runs["tds_clip"][0]
    tds_ckpt = tds.best_checkpoint or tds.last_checkpoint
    lines.append("")
    lines.append("Next: python -m tdsk.evaluate --checkpoint %s --views 1x2" % tds_ckpt)
    sample = os.path.join(root, "videos", "val", "left_0000.mp4")
    lines.append("      python -m tdsk.predict %s --checkpoint %s" % (sample, tds_ckpt))
    lines.append(f"  (deterministic on one machine: the same CPU type and thread count ({torch_threads()}) give the "
                 "same numbers; other CPUs round differently and may differ by a few videos)")
    print("\n".join(lines), flush=True)
    from tdsk import _io

    _io.write_text(os.path.join(out, "demo_summary.json"), json.dumps(_io.plain(summary), indent=1))
    return summary


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- main
