"""Classify video files: ``python -m tdsk.predict VIDEO [VIDEO ...] --checkpoint CKPT``.

Prints the top-5 classes with their probabilities for each file (``--json`` for one
JSON object per file). Videos are read with the recipe's test protocol (views =
crops x clips, softmax averaged); a JPEG frame folder works too. Class names come
from ``--labels FILE`` (one per line), else from the checkpoint, else indices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

__all__ = ["main", "predict"]


def predict(model, cfg: dict, paths: Sequence[str], *, views=None, top: int = 5, device="cpu",
            classes: Sequence[str] | None = None) -> list[dict]:
    """Top-``top`` predictions per file: ``[{"path", "top": [{"index", "label", "prob"}]} | {"path", "error"}]``."""
    import torch

    from tdsk.data import DecodeError, load_video_clip
    from tdsk.engine.evaluation import class_probabilities

    out = []
    for path in paths:
        try:
            video = load_video_clip(path, cfg["data"], views=views, device=device)
        except (DecodeError, FileNotFoundError, OSError) as exc:
            out.append({"path": path, "error": str(exc)})
            continue
        with torch.no_grad():
            probs, _ = class_probabilities(model, video.unsqueeze(0))
        values, indices = probs[0].topk(min(top, probs.shape[-1]))
        out.append({"path": path, "views": int(video.shape[0]), "top": [
            {"index": int(i), "label": classes[int(i)] if classes and int(i) < len(classes) else str(int(i)),
             "prob": float(v)} for v, i in zip(values, indices)]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from tdsk.evaluate import parse_views

    p = argparse.ArgumentParser(prog="python -m tdsk.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files (or JPEG frame folders); key=value items are config overrides")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cfg", help="recipe (default: the one stored in a tdsk checkpoint; needed for official ones)")
    p.add_argument("--labels", help="class names, one per line (index order)")
    p.add_argument("--views", type=parse_views, help="CROPSxCLIPS (default: the recipe's test views)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per video on stdout")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    overrides = [v for v in args.videos if "=" in v and not os.path.exists(v)]
    videos = [v for v in args.videos if v not in overrides]

    from tdsk.evaluate import load_for_inference, read_labels

    try:
        model, cfg, classes = load_for_inference(args.checkpoint, args.cfg, overrides, device=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.labels:
        classes = read_labels(args.labels)
    views = args.views or tuple((cfg.get("eval") or {}).get("views") or ()) or None
    results = predict(model, cfg, videos, views=views, top=args.top, device=args.device, classes=classes)
    failed = 0
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"{r['path']}: error: {r['error']}")
        else:
            print(f"{r['path']}  ({r['views']} views)")
            for rank, t in enumerate(r["top"], 1):
                print(f"  {rank}. {t['label']:<40s} {100 * t['prob']:6.2f}%  (class {t['index']})")
        failed += "error" in r
    return 1 if failed == len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
