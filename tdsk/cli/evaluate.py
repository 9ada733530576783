"""Multi-view test: ``python -m tdsk.evaluate --cfg ssv1_b16 --checkpoint CKPT [--views 3x2]``.

Each video is scored on crops x clips views (docs/sampling.md §5-6: softmax per view, probabilities
averaged), and top-1 / top-5 come from the averaged probabilities. Writes
``results.json``, ``per_class.csv`` (videos, correct, accuracy per class) and
``confusion.png`` next to the checkpoint (``<folder>-eval-...`` beside a model folder), or to ``--out``.

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

The model is loaded through :func:`tdsk.inference.load_model` (tdsk checkpoints,
official ones with ``--cfg``, and model folders written by
``tdsk.models.save_pretrained``) and run by a :class:`tdsk.inference.Recognizer`.
``--precision`` defaults to ``fp32``, the official test protocol (the published
numbers are fp32); ``--precision auto`` takes bf16 autocast where the hardware has
fast bf16 (CPU: AMX / AVX512-BF16) and logs which. ``--compile`` uses torch.compile.

Per-video results: ``--dump FILE.jsonl`` writes one JSON line per list entry, in list
order: ``{"index", "path", "line", "label", "label_name", "views", "top": [{"index",
"label", "prob"}], "correct"}``; a video the loader could not decode gets ``{"index",
"path", "line", "label", "skipped": reason}``, one whose output was not finite
``"nonfinite": true`` and an empty ``top``. ``--save-logits FILE.npy`` saves float32
``[N, K]``: the natural log of the view-averaged softmax probabilities (the log-probs
the scores are computed from; not raw logits), row ``i`` = list entry ``i`` = dump
line ``i``, NaN rows for skipped videos. The rows are matched to list entries through
the loader's dataset records and its sampler order (rank ``r`` of ``W`` scores entries
``r, r+W, ...``; the ranks' shares are gathered in rank order, as the scores are), so
under torchrun each video is still counted once and the files are written by rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from tdsk._io import write_json
from tdsk._paths import check_distinct, check_replaceable, record_written
# shared with the other tools (tdsk/cli/_common.py); re-exported here, where they used to live
from tdsk.cli._common import (_check_writable_file, _positive_int, check_output_writable, json_safe,  # noqa: F401
                              load_for_inference, parse_views, read_labels, user_errors)

__all__ = ["main", "parse_views", "load_for_inference", "read_labels", "user_errors", "check_eval_labels",
           "check_output_writable", "json_safe", "scored_entries", "write_dump", "write_logits"]


_RESULT_FILES = ("results.json", "per_class.csv", "confusion.png")
_B2N_FILES = ("results.json", "per_class_base.csv", "per_class_novel.csv")


def _record(folder: str, names) -> None:
    """Mark what this run wrote (tdsk._paths: a later run may replace it, nothing else)."""
    record_written(folder, [n for n in names if os.path.isfile(os.path.join(folder, n))], "evaluate")


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


class DumpMatchError(RuntimeError):
    """The scored rows could not be matched to the list entries (``--dump``/``--save-logits``)."""


def scored_entries(loader, result, info) -> tuple[list[int], dict[int, str], list]:
    """Match the rows of ``result`` (an :class:`~tdsk.engine.evaluation.EvalResult` of a pass
    over ``loader``) to the loader's list entries.

    Each rank scored its sampler share in order, minus the entries it skipped (in
    the same order, ``result.skipped``); ``evaluate`` gathers the ranks' rows and skipped
    lists in rank order, so walking the shares in rank order pairs every row with its
    entry. Returns ``(rows: list index of each result row, skipped: {list index: reason},
    records)``. Called on every rank (it gathers the shares); raises ``RuntimeError`` if
    the rows cannot be matched (never a silently shifted dump).
    """
    import torch

    records = list(loader.dataset.records)
    share = [int(i) for i in loader.sampler.indices()]
    shares = [share]
    if info.enabled:
        shares = [None] * info.world_size
        torch.distributed.all_gather_object(shares, share)
    skipped = list(result.skipped or [])
    rows, skipped_at, j = [], {}, 0
    for i in (i for part in shares for i in part):
        entry = skipped[j] if j < len(skipped) else None
        path = entry.get("path") if isinstance(entry, dict) else None
        if path is not None and path == records[i].path:
            skipped_at[i] = str(entry.get("reason", ""))
            j += 1
        else:
            rows.append(i)
    labels = [int(v) for v in result.labels]
    if j != len(skipped) or len(rows) != len(labels) or any(records[i].label != y for i, y in zip(rows, labels)):
        raise DumpMatchError(f"--dump/--save-logits: cannot match the {len(labels)} scored videos and {len(skipped)} "
                           f"skipped ones to the {len(records)} list entries in sampler order")
    return rows, skipped_at, records


def write_dump(path: str, result, rows, skipped_at, records, classes, views: int, top: int) -> int:
    """``--dump``: one JSON line per list entry, in list order (see the module docstring)."""
    import numpy as np

    def name(i: int):
        return classes[i] if classes and 0 <= i < len(classes) else str(i)

    by_entry = {i: r for r, i in enumerate(rows)}
    probs = np.asarray(result.probs)
    from tdsk import _io

    with _io.atomic_path(path) as tmp, open(tmp, "w") as f:
        for i, rec in enumerate(records):
            line = {"index": i, "path": rec.path, "line": rec.line, "label": rec.label, "label_name": name(rec.label)}
            if i in skipped_at:
                line["skipped"] = skipped_at[i] or "could not be decoded"
            elif i in by_entry:
                p = probs[by_entry[i]]
                line["views"] = views
                if not np.isfinite(p).all():
                    line.update(nonfinite=True, top=[], correct=False)
                else:
                    order = np.argsort(-p, kind="stable")[: min(top, p.shape[0])]
                    line["top"] = [{"index": int(k), "label": name(int(k)), "prob": float(p[k])} for k in order]
                    line["correct"] = bool(order[0] == rec.label)
            else:  # pragma: no cover - scored_entries covers every entry
                line["skipped"] = "not scored"
            f.write(json.dumps(json_safe(line), allow_nan=False) + "\n")
    return len(records)


def write_logits(path: str, result, rows, records) -> tuple:
    """``--save-logits``: float32 ``[N, K]`` log view-averaged probabilities in list order (NaN: skipped)."""
    import numpy as np

    probs = np.asarray(result.probs, dtype=np.float64)
    k = probs.shape[1] if probs.ndim == 2 and probs.size else 0
    out = np.full((len(records), k), np.nan, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(probs).astype(np.float32)
    for r, i in enumerate(rows):
        out[i] = logp[r]
    from tdsk import _io

    with _io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out)
    return out.shape


PROTOCOLS = ("supervised", "zero-shot", "base-to-novel")


def _model_name(args) -> str:
    return os.path.basename(os.path.normpath(args.checkpoint or args.cfg))


def _default_out(args, split: str, views) -> str:
    """Results next to the checkpoint (``<folder>-<tag>`` beside a model folder, never inside it)."""
    prefix = "eval" if args.protocol == "supervised" else args.protocol
    tag = f"{prefix}-{split}-{views[0]}x{views[1]}"
    if args.checkpoint is None:
        raise ValueError("--protocol zero-shot without --checkpoint: give --out, the folder for the results")
    if os.path.isdir(args.checkpoint):
        return f"{os.path.abspath(args.checkpoint).rstrip(os.sep)}-{tag}"
    return os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), tag)


def zero_shot_model(checkpoint: str | None, cfg_name: str | None, overrides: Sequence[str], classes_file: str | None,
                    device: str):
    """``(model, cfg, class names)`` for ``--protocol zero-shot``: the checkpoint's model, or the
    ``--cfg`` recipe's model built with its pretrained CLIP, switched to the names of
    ``classes_file`` (default: the recipe's ``data.labels``)."""
    from tdsk.models.open_vocab import require_open_vocabulary, use_classes

    if checkpoint is not None:
        model, cfg, _ = load_for_inference(checkpoint, cfg_name, overrides, device=device)
        names = read_labels(_classes_source(classes_file, cfg))
        use_classes(model, names, classes_file or "data.labels")
        return model, {**cfg, "model": {**cfg["model"], "num_classes": len(names)}}, names
    from tdsk.config import load_config
    from tdsk.models import build_model

    cfg = load_config(cfg_name, overrides)
    names = read_labels(_classes_source(classes_file, cfg))
    model_cfg = {**cfg["model"], "num_classes": len(names)}
    model = build_model({**cfg, "model": model_cfg}, class_names=names)
    require_open_vocabulary(model)
    return model.to(device).eval(), {**cfg, "model": model_cfg}, names


def _classes_source(classes_file: str | None, cfg) -> str:
    if classes_file:
        return classes_file
    labels = (cfg.get("data") or {}).get("labels")
    if not labels:
        raise ValueError("--protocol zero-shot needs the class names: give --classes FILE (or data.labels)")
    return labels


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)`` (0 when both are 0): the base-to-novel summary (docs/protocols.md)."""
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)


def base_to_novel_main(args) -> int:
    """``--protocol base-to-novel``: the model scored on the base classes' clips with a classifier of
    the base names, then on the novel classes' clips with one of the novel names (the recipe's
    ``data.labels`` split by ``data.base_classes`` / ``data.class_split_seed`` +
    ``data.base_fraction``); reports both accuracies and their harmonic mean."""
    from tdsk.config import check_data_paths
    from tdsk.data import DataConfig, build_loader
    from tdsk.data.protocols import protocol_class_names
    from tdsk.engine import distributed as D
    from tdsk.engine import evaluation as E
    from tdsk.inference import Recognizer
    from tdsk.models.open_vocab import require_open_vocabulary

    info = D.init(args.device)

    def fail(exc: BaseException) -> int:
        print(f"error: {exc}", file=sys.stderr)
        D.shutdown(info, sync=False)
        return 2

    parts, results = {}, {}
    try:
        model, cfg, _ = load_for_inference(args.checkpoint, args.cfg, args.overrides, device=str(info.device))
        require_open_vocabulary(model)
        data = dict(cfg["data"], few_shot=None)
        split = args.split
        if split == "test" and not data.get("test_list"):
            data["test_list"] = data.get("val_list")
        check_data_paths({**cfg, "data": data}, (split,))
        if not data.get("labels"):
            raise ValueError("--protocol base-to-novel needs the names of all classes: set data.labels (the base "
                             "and novel classes are split from them)")
        evalc = cfg.get("eval") or {}
        views = args.views or tuple(evalc.get("views") or (data.get("test_crops", 3), data.get("test_clips", 2)))
        out = args.out or _default_out(args, split, views)
        if info.is_main:
            check_output_writable(out)
            outputs = {f"{n} (in {out})": os.path.join(out, n) for n in _B2N_FILES}
            check_distinct(outputs, {k: v for k, v in {"--checkpoint": args.checkpoint, "--cfg": args.cfg}.items()
                                     if v and os.path.isfile(v)})
            for flag, path in outputs.items():
                check_replaceable(path, flag)
        for subset in ("base", "novel"):
            sub = {**data, "class_subset": subset}
            names = protocol_class_names(DataConfig.from_dict(sub), subset)
            check_eval_labels(DataConfig.from_dict(sub), split, len(names))
            parts[subset] = (sub, names)
    except user_errors(loading=True) as exc:
        return fail(exc)
    try:
        for subset, (sub, names) in parts.items():
            rec = Recognizer(model, {**cfg, "data": sub}, names, device=info.device, precision=args.precision,
                             compile=args.compile, views=tuple(views), switch_classes=True)
            loader = build_loader(sub, split, batch_size=args.batch_size or int(evalc.get("test_batch_size", 4)),
                                  device=info.device, rank=info.rank, world_size=info.world_size,
                                  views=tuple(views) if split == "test" else None)
            res = E.evaluate(rec.forward_module, loader, device=info.device, autocast=rec.autocast(), dist_info=info,
                             progress=not args.no_progress, desc=f"{subset} {views[0]}x{views[1]}")
            results[subset] = (res, names)
    except user_errors(loading=True) as exc:
        return fail(exc)
    if not info.is_main:
        D.shutdown(info)
        return 0
    summary = {"protocol": "base-to-novel", "split": split, "views": list(views), "precision": rec.precision,
               "checkpoint": os.path.abspath(args.checkpoint), "labels": data.get("labels"),
               "base_classes": data.get("base_classes"), "base_fraction": data.get("base_fraction", 0.5),
               "class_split_seed": data.get("class_split_seed", 0)}
    for subset, (res, names) in results.items():
        csv_path = E.write_per_class_csv(res, names, os.path.join(out, f"per_class_{subset}.csv"))
        summary[subset] = {**res.summary(), "classes": names, "per_class_csv": csv_path, "seconds": res.seconds}
    b, n = results["base"][0].top1, results["novel"][0].top1
    summary["harmonic_mean"] = harmonic_mean(b, n)
    summary["harmonic_mean_top5"] = harmonic_mean(results["base"][0].top5, results["novel"][0].top5)
    results_path = os.path.join(out, "results.json")
    write_json(results_path, json_safe(summary))
    _record(out, _B2N_FILES)
    print(f"base-to-novel, {views[0]}x{views[1]} views: base top-1 {100 * b:.2f}% ({results['base'][0].count} videos, "
          f"{len(results['base'][1])} classes)  novel top-1 {100 * n:.2f}% ({results['novel'][0].count} videos, "
          f"{len(results['novel'][1])} classes)  HM {100 * summary['harmonic_mean']:.2f}%\n"
          f"  results             {results_path}")
    D.shutdown(info)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    p = argparse.ArgumentParser(prog="python -m tdsk.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint",
                   help="tdsk checkpoint (epoch_*.pt, best.pt), official TDS-CLIP file, or model folder (without "
                        "it, --protocol zero-shot builds the --cfg recipe's model with its pretrained CLIP)")
    p.add_argument("--protocol", default="supervised", choices=PROTOCOLS,
                   help="supervised (default): the model's own classes; zero-shot: the classes of --classes, the "
                        "list's labels index into it; base-to-novel: base and novel accuracy and their harmonic "
                        "mean over the recipe's class split (docs/protocols.md)")
    p.add_argument("--classes", metavar="FILE",
                   help="--protocol zero-shot: the class names the model scores and the list's labels index "
                        "(any class-name file; default: the recipe's data.labels)")
    p.add_argument("--cfg", help="recipe name or YAML path (default: the one stored in a tdsk checkpoint / folder)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS, e.g. 3x2 (default: eval.views of the recipe)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="list to score: data.test_list (falls back to data.val_list), or data.val_list")
    p.add_argument("--batch-size", type=int, help="videos per batch (default eval.test_batch_size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "auto", "bf16", "fp16", "int8"],
                   help="autocast dtype; default fp32, the official test protocol of the published numbers "
                        "(auto: bf16 where the hardware has fast bf16, e.g. AMX / AVX512-BF16 CPUs; fp16 on other "
                        "GPUs; int8 linear layers on other CPUs)")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder for results.json, per_class.csv, confusion.png")
    p.add_argument("--labels", help="class-name file (one per line) for the CSV and the plot")
    p.add_argument("--dump", metavar="FILE.jsonl", help="per-video results, one JSON line per list entry")
    p.add_argument("--save-logits", metavar="FILE.npy",
                   help="float32 [N, K] log of the view-averaged probabilities, in list order (NaN rows: skipped)")
    p.add_argument("--top", type=_positive_int, default=5, help="classes per video in --dump (default 5)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    if args.checkpoint is None and not (args.protocol == "zero-shot" and args.cfg):
        p.error("--checkpoint is required (only --protocol zero-shot with --cfg builds a model without one)")
    if args.classes and args.protocol != "zero-shot":
        p.error("--classes is for --protocol zero-shot (base-to-novel takes the classes from the recipe's "
                "data.labels and class split)")
    if args.protocol != "supervised" and args.labels:
        p.error(f"--labels (names shown) does not apply to --protocol {args.protocol}: the names are the classes scored")
    if args.protocol == "base-to-novel" and (args.dump or args.save_logits):
        p.error("--dump / --save-logits are for one class set: use --protocol supervised or zero-shot")
    if args.protocol == "base-to-novel":
        return base_to_novel_main(args)

    from tdsk.config import check_data_paths
    from tdsk.data import DataConfig, build_loader
    from tdsk.engine import distributed as D
    from tdsk.engine import evaluation as E
    from tdsk.engine.metrics import plot_confusion
    from tdsk.inference import Recognizer

    info = D.init(args.device)

    def fail(exc: BaseException) -> int:
        print(f"error: {exc}", file=sys.stderr)
        D.shutdown(info, sync=False)  # the other ranks may be inside a collective: fail them now
        return 2

    # Everything that can be checked is checked before the (long) evaluation pass.
    try:
        if args.protocol == "zero-shot":
            model, cfg, classes = zero_shot_model(args.checkpoint, args.cfg, args.overrides, args.classes,
                                                  str(info.device))
        else:
            model, cfg, classes = load_for_inference(args.checkpoint, args.cfg, args.overrides,
                                                     device=str(info.device))
        data = dict(cfg["data"])
        if args.protocol == "zero-shot":  # the list's labels index into the class file, every clip counts
            data.update(class_subset="all", few_shot=None)
        split = args.split
        if split == "test" and not data.get("test_list"):
            data["test_list"] = data.get("val_list")  # SSv1/SSv2/K400 report on the validation set
        check_data_paths({**cfg, "data": data}, (split,))
        data_cfg = DataConfig.from_dict(data)
        check_eval_labels(data_cfg, split, _num_classes(model, cfg))
        evalc = cfg.get("eval") or {}
        views = args.views or tuple(evalc.get("views") or (data.get("test_crops", 3), data.get("test_clips", 2)))
        out = args.out or _default_out(args, split, views)
        if info.is_main:
            check_output_writable(out)
            for flag, path in (("--dump", args.dump), ("--save-logits", args.save_logits)):
                if path:
                    _check_writable_file(path, flag)
            # no output may be an input or another output, nor replace a file tdsk did not write
            outputs = {"--dump": args.dump, "--save-logits": args.save_logits,
                       **{f"{name} (in {out})": os.path.join(out, name) for name in _RESULT_FILES}}
            inputs = {"--checkpoint": args.checkpoint, "--labels": args.labels, "--cfg": args.cfg,
                      "--classes": args.classes,
                      f"the {split} list": data.get(f"{split}_list")}
            check_distinct(outputs, {k: v for k, v in inputs.items() if v and os.path.isfile(v)})
            for flag, path in outputs.items():
                if path:
                    check_replaceable(path, flag)
        if args.labels:
            from tdsk.data.labels import labels_for_model

            classes = labels_for_model(args.labels, _num_classes(model, cfg), f"--labels {args.labels}")
        loader = build_loader(data, split, batch_size=args.batch_size or int(evalc.get("test_batch_size", 4)),
                              device=info.device, rank=info.rank, world_size=info.world_size,
                              views=tuple(views) if split == "test" else None)
        if (args.dump or args.save_logits) and not (hasattr(loader, "dataset") and hasattr(loader, "sampler")
                                                    and hasattr(loader.sampler, "indices")):
            raise ValueError("--dump/--save-logits need a loader with dataset records and a sampler order "
                             f"({type(loader).__name__} has none)")
        rec = Recognizer(model, {**cfg, "data": data}, classes, device=info.device, precision=args.precision,
                         compile=args.compile, views=tuple(views), switch_classes=args.protocol == "zero-shot")
        setup_error = None
    except user_errors(loading=True) as exc:
        setup_error = exc
    if info.enabled:  # a check that failed on one rank (rank 0's output checks) stops every rank
        import torch

        flag = D.all_reduce_sum(torch.tensor([0.0 if setup_error is None else 1.0], device=info.device), info)
        if setup_error is None and float(flag.item()) > 0:
            setup_error = RuntimeError("another rank could not set up the evaluation (see its message)")
    if setup_error is not None:
        return fail(setup_error)
    try:
        result = E.evaluate(rec.forward_module, loader, device=info.device, autocast=rec.autocast(),
                            dist_info=info, progress=not args.no_progress, desc=f"test {views[0]}x{views[1]}")
        matched = scored_entries(loader, result, info) if (args.dump or args.save_logits) else None
    except (DumpMatchError,) + user_errors() as exc:  # e.g. BadSampleError: too many undecodable videos
        return fail(exc)
    if not info.is_main:
        D.shutdown(info)
        return 0
    csv_path = E.write_per_class_csv(result, classes, os.path.join(out, "per_class.csv"))
    png = plot_confusion(result.confusion(), classes, os.path.join(out, "confusion.png"),
                         title=f"{_model_name(args)}: top-1 {100 * result.top1:.2f}%")
    nonfinite = int(getattr(result, "num_nonfinite", 0) or 0)
    skipped = list(getattr(result, "skipped", None) or [])
    summary = {**result.summary(), "protocol": args.protocol, "views": list(views), "split": split,
               "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None,
               "precision": rec.precision, "seconds": result.seconds, "per_class_csv": csv_path, "confusion_png": png}
    if args.protocol == "zero-shot":
        summary.update(classes=os.path.abspath(args.classes) if args.classes else data.get("labels"),
                       num_classes=len(classes))
    summary.setdefault("nonfinite", nonfinite)
    summary.setdefault("skipped", skipped)
    per_video = []
    if matched is not None:
        rows, skipped_at, records = matched
        n_views = int(views[0]) * int(views[1]) if split == "test" else 1
        if args.dump:
            write_dump(args.dump, result, rows, skipped_at, records, classes, n_views, args.top)
            summary["dump"] = os.path.abspath(args.dump)
            per_video.append(f"  per-video results   {args.dump}")
        if args.save_logits:
            shape = write_logits(args.save_logits, result, rows, records)
            summary["logits"] = {"path": os.path.abspath(args.save_logits), "shape": list(shape),
                                 "kind": "log of view-averaged softmax probabilities, list order, NaN = skipped"}
            per_video.append(f"  log-probs {shape[0]}x{shape[1]}  {args.save_logits}")
    results_path = os.path.join(out, "results.json")
    write_json(results_path, json_safe(summary))
    _record(out, _RESULT_FILES)
    for path in (args.dump, args.save_logits):
        if path:
            _record(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
    notes = "".join([f"  {nonfinite} non-finite (counted wrong)" if nonfinite else "",
                     f"  {len(skipped)} skipped" if skipped else ""])
    what = "zero-shot, " if args.protocol == "zero-shot" else ""
    print(f"{what}{result.count} videos, {views[0]}x{views[1]} views: top-1 {100 * result.top1:.2f}%  "
          f"top-5 {100 * result.top5:.2f}%{notes}  ({result.seconds:.1f} s, {rec.precision})\n"
          f"  per-class accuracy  {csv_path}\n  confusion matrix    {png}\n"
          f"  results             {results_path}" + "".join("\n" + x for x in per_video))
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
