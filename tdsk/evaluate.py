"""Multi-view test: ``python -m tdsk.evaluate --cfg ssv1_b16 --checkpoint CKPT [--views 3x2]``.

Each video is scored on crops x clips views (docs/sampling.md §5-6: softmax per view, probabilities
averaged), and top-1 / top-5 come from the averaged probabilities. Writes
``results.json``, ``per_class.csv`` (videos, correct, accuracy per class) and
``confusion.png`` next to the checkpoint (or to ``--out``).

``--checkpoint`` takes tdsk training checkpoints (``epoch_*.pt``, ``best.pt``; their
recipe is stored inside, so ``--cfg`` is optional) and official TDS-CLIP checkpoints
(``model_state_dict`` with ``visual.*``/``fc.*`` keys; then ``--cfg`` names the recipe
whose model they belong to).

Before the evaluation pass the list labels and ``data.flip_label_pairs`` are checked
against the model's classes and the output folder is checked for writing. Problems the
user can fix (recipe, list, data, checkpoint path, output folder, too many undecodable
videos) end as one ``error: ...`` message with exit code 2. Videos with non-finite model
output count as wrong and are reported; ``results.json`` is always valid JSON
(non-finite numbers are ``null``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Any, Sequence

__all__ = ["main", "parse_views", "load_for_inference", "read_labels", "user_errors", "check_eval_labels",
           "check_output_writable", "json_safe"]


def user_errors(loading: bool = False) -> tuple:
    """Exception classes that mean "the user can fix this" (bad recipe, list, data, paths).

    ``main`` reports them as one ``error: ...`` line with exit code 2 instead of a
    traceback. With ``loading=True`` also ``ValueError``/``RuntimeError``/``OSError``,
    which is what reading and matching a checkpoint raises for a wrong file.
    """
    from tdsk.config import ConfigError, DataNotFoundError
    from tdsk.data.decoders import DecodeError
    from tdsk.data.lists import ListFormatError
    from tdsk.data.loader import BadSampleError

    base = (ConfigError, DataNotFoundError, ListFormatError, BadSampleError, DecodeError, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError)
    return base + ((ValueError, RuntimeError, OSError) if loading else ())


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy scalars/arrays as Python values,
    so ``json.dump(..., allow_nan=False)`` always writes valid JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        return json_safe(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


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

    if os.path.isdir(checkpoint):
        raise IsADirectoryError(f"--checkpoint {checkpoint}: is a directory, expected a checkpoint file "
                                "(e.g. <run dir>/best.pt)")
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


def _num_classes(model, cfg) -> int | None:
    n = getattr(model, "num_classes", None) or (cfg.get("model") or {}).get("num_classes")
    return int(n) if n else None


def check_eval_labels(data_cfg, split: str, num_classes: int | None) -> None:
    """Before an evaluation pass: every label of the ``split`` list, and (with ``data.flip:
    sth``, the mode that uses them) every ``data.flip_label_pairs`` entry, must be a class
    of the model (``0..num_classes-1``). Raises :class:`tdsk.config.ConfigError` naming
    the list file and line, or the key."""
    from tdsk.config import ConfigError
    from tdsk.data.loader import load_records

    if not num_classes:
        return
    if data_cfg.flip == "sth":
        for i, pair in enumerate(data_cfg.flip_label_pairs or ()):
            bad = [int(c) for c in pair if not 0 <= int(c) < num_classes]
            if bad:
                raise ConfigError(
                    f"data.flip_label_pairs[{i}]={list(pair)}: class {bad[0]} is outside 0..{num_classes - 1} "
                    f"(model.num_classes={num_classes}); is this the recipe of another dataset?")
    records = load_records(data_cfg, split)
    if not records:
        return
    list_file = data_cfg.list_for(split)
    for worst in (max(records, key=lambda r: r.label), min(records, key=lambda r: r.label)):
        if not 0 <= worst.label < num_classes:
            raise ConfigError(
                f"{list_file}:{worst.line}: label {worst.label} but model.num_classes={num_classes} "
                f"(labels must be 0..{num_classes - 1}); is this the list of another dataset?")


def check_output_writable(out: str) -> str:
    """Create ``out`` and try a temporary file in it; ``PermissionError``/``OSError`` with
    a clear message if results could not be written there."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tdsk-write-test-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PermissionError(f"--out {out}: cannot write results there ({exc.strerror or exc})") from None
    return out


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

    from tdsk.config import check_data_paths
    from tdsk.data import DataConfig, build_loader
    from tdsk.engine import distributed as D
    from tdsk.engine.evaluation import evaluate, write_per_class_csv
    from tdsk.engine.metrics import plot_confusion
    from tdsk.engine.trainer import autocast_context

    info = D.init(args.device)

    def fail(exc: BaseException) -> int:
        print(f"error: {exc}", file=sys.stderr)
        D.shutdown(info)
        return 2

    # Everything that can be checked is checked before the (long) evaluation pass.
    try:
        model, cfg, classes = load_for_inference(args.checkpoint, args.cfg, args.overrides, device=str(info.device))
        data = dict(cfg["data"])
        split = args.split
        if split == "test" and not data.get("test_list"):
            data["test_list"] = data.get("val_list")  # SSv1/SSv2/K400 report on the validation set
        check_data_paths({**cfg, "data": data}, (split,))
        data_cfg = DataConfig.from_dict(data)
        check_eval_labels(data_cfg, split, _num_classes(model, cfg))
        evalc = cfg.get("eval") or {}
        views = args.views or tuple(evalc.get("views") or (data.get("test_crops", 3), data.get("test_clips", 2)))
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                       f"eval-{split}-{views[0]}x{views[1]}")
        if info.is_main:
            check_output_writable(out)
        if args.labels:
            classes = read_labels(args.labels)
        loader = build_loader(data, split, batch_size=args.batch_size or int(evalc.get("test_batch_size", 4)),
                              device=info.device, rank=info.rank, world_size=info.world_size,
                              views=tuple(views) if split == "test" else None)
    except user_errors(loading=True) as exc:
        return fail(exc)
    try:
        result = evaluate(model, loader, device=info.device, autocast=autocast_context(args.precision, info.device),
                          dist_info=info, progress=not args.no_progress, desc=f"test {views[0]}x{views[1]}")
    except user_errors() as exc:  # e.g. BadSampleError: too many undecodable videos
        return fail(exc)
    if not info.is_main:
        D.shutdown(info)
        return 0
    csv_path = write_per_class_csv(result, classes, os.path.join(out, "per_class.csv"))
    png = plot_confusion(result.confusion(), classes, os.path.join(out, "confusion.png"),
                         title=f"{os.path.basename(args.checkpoint)}: top-1 {100 * result.top1:.2f}%")
    nonfinite = int(getattr(result, "num_nonfinite", 0) or 0)
    skipped = list(getattr(result, "skipped", None) or [])
    summary = {**result.summary(), "views": list(views), "split": split, "checkpoint": os.path.abspath(args.checkpoint),
               "seconds": result.seconds, "per_class_csv": csv_path, "confusion_png": png}
    summary.setdefault("nonfinite", nonfinite)
    summary.setdefault("skipped", skipped)
    results_path = os.path.join(out, "results.json")
    with open(results_path, "w") as f:
        json.dump(json_safe(summary), f, indent=1, allow_nan=False)
    notes = "".join([f"  {nonfinite} non-finite (counted wrong)" if nonfinite else "",
                     f"  {len(skipped)} skipped" if skipped else ""])
    print(f"{result.count} videos, {views[0]}x{views[1]} views: top-1 {100 * result.top1:.2f}%  "
          f"top-5 {100 * result.top5:.2f}%{notes}  ({result.seconds:.1f} s)\n"
          f"  per-class accuracy  {csv_path}\n  confusion matrix    {png}\n"
          f"  results             {results_path}")
    if nonfinite:
        print(f"warning: {nonfinite} video(s) got non-finite model output (NaN/inf logits); they count as wrong. "
              "Check the checkpoint and --precision.", file=sys.stderr)
    if skipped:
        shown = "\n  ".join(f"{s.get('path', '?')}: {s.get('reason', '?')}" if isinstance(s, dict) else str(s)
                            for s in skipped[:10])
        more = f"\n  ... and {len(skipped) - 10} more (see results.json)" if len(skipped) > 10 else ""
        print(f"warning: {len(skipped)} video(s) skipped:\n  {shown}{more}", file=sys.stderr)
    D.shutdown(info)
    return 0

if __name__ == "__main__":
    sys.exit(main())
