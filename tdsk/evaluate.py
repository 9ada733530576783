"""Multi-view test: ``python -m tdsk.evaluate --cfg ssv1_b16 --checkpoint CKPT [--views 3x2]``.

Each video is scored on crops x clips views (spec 9: softmax per view, probabilities
averaged), and top-1 / top-5 come from the averaged probabilities. Writes
``results.json``, ``per_class.csv`` (videos, correct, accuracy per class) and
``confusion.png`` next to the checkpoint (or to ``--out``).

``--checkpoint`` takes tdsk training checkpoints (``epoch_*.pt``, ``best.pt``; their
recipe is stored inside, so ``--cfg`` is optional) and official TDS-CLIP checkpoints
(``model_state_dict`` with ``visual.*``/``fc.*`` keys; then ``--cfg`` names the recipe
whose model they belong to).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

__all__ = ["main", "parse_views", "load_for_inference", "read_labels"]


def parse_views(text: str | None) -> tuple[int, int] | None:
    """``"3x2"`` -> (3 crops, 2 clips)."""
    if text is None:
        return None
    try:
        crops, clips = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views {text!r}: expected CROPSxCLIPS, e.g. 3x2") from None
    if crops not in (1, 3) or clips < 1:
        raise argparse.ArgumentTypeError(f"--views {text!r}: crops must be 1 or 3 and clips >= 1")
    return crops, clips


def read_labels(path: str) -> list[str]:
    """Class names, one per line (``name``, ``index name`` or ``index,name``), in index order."""
    names: dict[int, str] = {}
    with open(path) as f:
        rows = [line.strip() for line in f if line.strip()]
    for i, row in enumerate(rows):
        for sep in (",", "\t", " "):
            head, _, tail = row.partition(sep)
            if tail and head.strip().isdigit():
                names[int(head)] = tail.strip().strip('"')
                break
        else:
            names[i] = row
    return [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []


def load_for_inference(checkpoint: str, cfg_name: str | None = None, overrides: Sequence[str] = (),
                       device: str = "cpu"):
    """Build the model for ``checkpoint`` and load its weights.

    Returns ``(model, cfg, classes)``; ``classes`` is ``None`` unless the checkpoint
    stores them. The model is in eval mode on ``device``.
    """
    import torch

    from tdsk.config import apply_overrides, load_config
    from tdsk.engine import checkpoint as C
    from tdsk.engine.trainer import build_model

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file")
    ckpt = C.load(checkpoint)
    classes = None
    if C.is_training_checkpoint(ckpt):
        cfg = load_config(cfg_name, overrides) if cfg_name else apply_overrides(dict(ckpt["config"]), overrides)
        model = build_model(cfg)
        C.load_model_state(model, ckpt)
        classes = ckpt.get("classes")
    else:
        if not cfg_name:
            raise ValueError(f"{checkpoint} is not a tdsk training checkpoint; pass --cfg with the recipe it "
                             "belongs to (e.g. --cfg ssv1_b16 for an official TDS-CLIP B/16 SSv1 checkpoint)")
        from tdsk.models import load_checkpoint

        cfg = load_config(cfg_name, overrides)
        model = build_model(cfg)
        del ckpt
        load_checkpoint(model, checkpoint)
    model.to(torch.device(device)).eval()
    return model, cfg, classes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsk.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="tdsk checkpoint (epoch_*.pt, best.pt) or official TDS-CLIP file")
    p.add_argument("--cfg", help="recipe name or YAML path (default: the one stored in a tdsk checkpoint)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS, e.g. 3x2 (default: eval.views of the recipe)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="list to score: data.test_list (falls back to data.val_list), or data.val_list")
    p.add_argument("--batch-size", type=int, help="videos per batch (default eval.test_batch_size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype (official test: fp32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder for results.json, per_class.csv, confusion.png")
    p.add_argument("--labels", help="class-name file (one per line) for the CSV and the plot")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    from tdsk.config import ConfigError, DataNotFoundError, check_data_paths
    from tdsk.engine import distributed as D
    from tdsk.engine.evaluation import evaluate, write_per_class_csv
    from tdsk.engine.metrics import plot_confusion
    from tdsk.engine.trainer import autocast_context

    info = D.init(args.device)
    try:
        model, cfg, classes = load_for_inference(args.checkpoint, args.cfg, args.overrides, device=str(info.device))
        data = dict(cfg["data"])
        split = args.split
        if split == "test" and not data.get("test_list"):
            data["test_list"] = data.get("val_list")  # SSv1/SSv2/K400 report on the validation set
        check_data_paths({**cfg, "data": data}, (split,))
    except (ConfigError, DataNotFoundError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evalc = cfg.get("eval") or {}
    views = args.views or tuple(evalc.get("views") or (data.get("test_crops", 3), data.get("test_clips", 2)))
    from tdsk.data import build_loader

    loader = build_loader(data, split, batch_size=args.batch_size or int(evalc.get("test_batch_size", 4)),
                          device=info.device, rank=info.rank, world_size=info.world_size,
                          views=tuple(views) if split == "test" else None)
    if args.labels:
        classes = read_labels(args.labels)
    result = evaluate(model, loader, device=info.device, autocast=autocast_context(args.precision, info.device),
                      dist_info=info, progress=not args.no_progress, desc=f"test {views[0]}x{views[1]}")
    if not info.is_main:
        D.shutdown(info)
        return 0
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                   f"eval-{split}-{views[0]}x{views[1]}")
    os.makedirs(out, exist_ok=True)
    csv_path = write_per_class_csv(result, classes, os.path.join(out, "per_class.csv"))
    png = plot_confusion(result.confusion(), classes, os.path.join(out, "confusion.png"),
                         title=f"{os.path.basename(args.checkpoint)}: top-1 {100 * result.top1:.2f}%")
    summary = {**result.summary(), "views": list(views), "split": split, "checkpoint": os.path.abspath(args.checkpoint),
               "seconds": result.seconds, "per_class_csv": csv_path, "confusion_png": png}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{result.count} videos, {views[0]}x{views[1]} views: top-1 {100 * result.top1:.2f}%  "
          f"top-5 {100 * result.top5:.2f}%  ({result.seconds:.1f} s)\n"
          f"  per-class accuracy  {csv_path}\n  confusion matrix    {png}\n"
          f"  results             {os.path.join(out, 'results.json')}")
    D.shutdown(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
