"""Export a trained model: ``python -m tdsk.export --checkpoint CKPT --format onnx|pt2|folder --out PATH``.

Formats (docs/export.md):

* ``onnx``: an ONNX model (``torch.onnx.export(dynamo=True)``) that ONNX Runtime or any
  ONNX consumer runs without torch or tdsk;
* ``pt2``: a ``torch.export`` program (``torch.export.save``) that ``torch.export.load``
  loads and runs with plain torch, without tdsk installed;
* ``folder``: a tdsk model folder (``tdsk.models.save_pretrained``; load it back with
  ``tdsk.models.from_pretrained``).

The tdsk custom ops (``torch.ops.tdsk.frame_diff_concat``, ``temporal_pool_diff``) are
decomposed into standard ATen operators before the graph is saved
(:func:`tdsk.ops.decompositions.decompose`: their pure-PyTorch references, traced), so
neither file calls into tdsk. The batch dimension is dynamic; the others are fixed by the
model (``T = model.num_segments``, ``M = model.num_local``, ``H = W = model.input_size``).

Graph signature (``--views 1``, the default)::

    video  float32[batch, T, M, 3, H, W]   CLIP-normalised frames   ->   logits float32[batch, K]

With ``--views V`` (or ``CROPSxCLIPS``, V = crops * clips) the graph scores V views of each
video and applies the official test protocol (softmax per view, probabilities averaged)::

    video  float32[batch, V, T, M, 3, H, W]  ->  probs float32[batch, K], logits float32[batch, V, K]

After writing, the file is loaded and run on a random batch and compared with the eager
model (``--no-check`` skips this; the ONNX check needs ``onnxruntime``). ``--classes FILE`` first
switches a model with a text classifier to other classes (open vocabulary, docs/protocols.md):
their text embeddings become constants of the graph, which then scores those classes. Exit code 0 on
success, 1 when the check finds a difference above its tolerance, 2 for a usage error
(bad checkpoint, recipe, override, output path, missing export dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tdsk import _io
from tdsk.models.registry import logits_of

__all__ = [
    "FORMATS", "INPUT_NAME", "export_program", "export_pt2", "export_onnx", "export_folder",
    "export_metadata", "example_input", "MultiViewScores", "check_export", "parse_views_count", "main",
]

FORMATS = ("onnx", "pt2", "folder")
INPUT_NAME = "video"
METADATA_KEY = "tdsk"  # ONNX metadata_props key, and "tdsk.json" in the .pt2's extra files
METADATA_FORMAT = "tdsk.export/1"
# The exported fp32 graph against the eager fp32 model: the same operations, possibly in
# another order (ONNX Runtime's kernels); the difference is a few float32 ulp of the logits.
CHECK_TOLERANCE = 1e-4  # times max(1, max |logit|)
# Example batch for tracing: 2, not 1 (torch.export specialises a size-1 dimension).
_EXAMPLE_BATCH = 2


class MultiViewScores(nn.Module):
    """``video[B, V, T, M, 3, H, W] -> (probs[B, K], logits[B, V, K])``: each view scored on its own,
    softmax per view, probabilities averaged over views (the official test protocol,
    :func:`tdsk.engine.evaluation.class_probabilities`)."""

    def __init__(self, model: nn.Module, views: int):
        super().__init__()
        self.model = model
        self.views = int(views)

    def forward(self, video: torch.Tensor):
        b, v = video.shape[:2]
        logits = logits_of(self.model, self.model(video.flatten(0, 1))).float().view(b, v, -1)
        return logits.softmax(-1).mean(1), logits


def _clip_shape(model: nn.Module) -> Tuple[int, int, int]:
    size = getattr(getattr(model, "encoder", None), "image_size", None) or int(model.config["input_size"])
    return int(model.num_segments), int(model.num_local), int(size)


def example_input(model: nn.Module, batch: int = _EXAMPLE_BATCH, views: int = 1,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random normalised clip batch in the exported graph's input layout."""
    t, m, size = _clip_shape(model)
    lead = (batch,) if views == 1 else (batch, views)
    return torch.randn(*lead, t, m, 3, size, size, generator=generator)


def _graph_module(model: nn.Module, views: int) -> nn.Module:
    return model if views == 1 else MultiViewScores(model, views)


def output_names(views: int = 1) -> Tuple[str, ...]:
    return ("logits",) if views == 1 else ("probs", "logits")


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=1 << 16)


def export_program(model: nn.Module, views: int = 1) -> "torch.export.ExportedProgram":
    """``torch.export`` of the eval-mode ``model`` (on the CPU, fp32) with a dynamic batch
    dimension and every tdsk custom op decomposed into standard ATen operators."""
    from tdsk.ops.decompositions import decompose

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if model.training:
        raise ValueError("export_program: put the model in eval mode first (model.eval()): the exported "
                         "graph uses the BatchNorm running statistics")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"export_program: move the model to the CPU first (it is on {device})")
    module = _graph_module(model, views)
    batch = _batch_dim()
    with torch.no_grad():
        program = torch.export.export(module, (example_input(model, views=views),),
                                      dynamic_shapes=({0: batch},))
    return decompose(program)


def export_metadata(model: nn.Module, views: int = 1, classes: Optional[Sequence[str]] = None,
                    cfg: Optional[Dict] = None) -> Dict[str, Any]:
    """What a consumer of the exported file needs to feed it and read its output."""
    from tdsk._version import version
    from tdsk.schema import CLIP_MEAN, CLIP_STD

    t, m, size = _clip_shape(model)
    data = (cfg or {}).get("data") or {}
    shape = ["batch"] + ([] if views == 1 else [views]) + [t, m, 3, size, size]
    k = int(model.num_classes)
    outputs = ({"logits": ["batch", k]} if views == 1 else {"probs": ["batch", k], "logits": ["batch", views, k]})
    return {
        "format": METADATA_FORMAT,
        "tdsk_version": version(),
        "torch_version": torch.__version__,
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": shape,
                                "layout": ("B" if views == 1 else "B, V") + ", T, M, 3, H, W"}},
        "outputs": {name: {"dtype": "float32", "shape": s} for name, s in outputs.items()},
        "views": views,
        "num_segments": t, "num_local": m, "input_size": size, "centre_frame": m // 2,
        "num_classes": k,
        "mean": [float(v) for v in data.get("mean", CLIP_MEAN)],
        "std": [float(v) for v in data.get("std", CLIP_STD)],
        "normalisation": "frames RGB in [0, 1], then (x - mean) / std per channel",
        "classes": list(classes) if classes else None,
        "model": dict(getattr(model, "config", {}) or {}),
    }


def export_pt2(model: nn.Module, path: str, views: int = 1, metadata: Optional[Dict] = None,
               program: "Optional[torch.export.ExportedProgram]" = None) -> str:
    """Write the decomposed ``torch.export`` program to ``path`` (``torch.export.save``).

    ``metadata`` (default :func:`export_metadata`) goes into the archive's extra file
    ``tdsk.json``: ``torch.export.load(path, extra_files={"tdsk.json": ""})`` reads it back.
    """
    program = program if program is not None else export_program(model, views)
    meta = metadata if metadata is not None else export_metadata(model, views)
    program.example_inputs = None  # not stored: a batch of B/16 clips is ~50 MB (the metadata has the shape)
    with _io.atomic_path(path, keep_name=True) as tmp:
        torch.export.save(program, tmp, extra_files={f"{METADATA_KEY}.json": json.dumps(meta, default=str)})
    return path


def _import_onnx_exporter():
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter translates through it)
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({exc}); install them with "
                          "`pip install -e \".[deploy]\"` (or `pip install onnx onnxscript onnxruntime`)") from None


def export_onnx(model: nn.Module, path: str, views: int = 1, opset: Optional[int] = None,
                metadata: Optional[Dict] = None,
                program: "Optional[torch.export.ExportedProgram]" = None) -> str:
    """Write an ONNX model to ``path`` (input ``video``, outputs ``logits`` (and ``probs``),
    dynamic ``batch``). ``opset``: the ONNX opset (default: torch.onnx's). ``metadata``
    (default :func:`export_metadata`) is stored as JSON in the model's ``metadata_props["tdsk"]``.

    Weights are stored in the file; a model above the 2 GB protobuf limit gets them in
    ``PATH.data`` next to it (ONNX external data).
    """
    import logging
    import warnings

    _import_onnx_exporter()
    program = program if program is not None else export_program(model, views)
    meta = metadata if metadata is not None else export_metadata(model, views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            onnx_program = torch.onnx.export(
                program, (example_input(model, views=views),), input_names=[INPUT_NAME],
                output_names=list(output_names(views)), opset_version=opset, dynamo=True, verbose=False,
                dynamic_shapes=({0: _batch_dim()},),  # names the dynamic axis "batch" in the ONNX graph
            )
        finally:
            quiet.setLevel(level)
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(meta, default=str)
    onnx_program.model.producer_name = "tdsk"
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    if weight_bytes > 1.8e9:  # external data: its file name follows the model's, so write in place
        onnx_program.save(path, external_data=True)
        return path
    with _io.atomic_path(path, keep_name=True) as tmp:
        onnx_program.save(tmp, external_data=False)
    return path


def export_folder(model: nn.Module, folder: str, classes: Optional[Sequence[str]] = None,
                  cfg: Optional[Dict] = None, include_clip: bool = True, overwrite: bool = False):
    """A tdsk model folder: :func:`tdsk.models.pretrained.save_pretrained` (the folder format's owner)."""
    try:
        from tdsk.models.pretrained import save_pretrained
    except ImportError as exc:
        raise ImportError(f"--format folder needs tdsk.models.pretrained.save_pretrained ({exc})") from None
    return save_pretrained(model, folder, labels=list(classes) if classes else None, recipe=cfg,
                           include_clip=include_clip, overwrite=overwrite)


# ----------------------------------------------------------------------------- checking

def _pt2_runner(path: str):
    module = torch.export.load(path).module()

    def run(video):
        with torch.no_grad():
            out = module(video)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return run


def _onnx_runner(path: str):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(video):
        return tuple(torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: video.numpy()}))

    return run


def check_export(path: str, fmt: str, model: nn.Module, views: int = 1, batches: Sequence[int] = (2,),
                 seed: int = 0) -> float:
    """Max |exported - eager| over the outputs, relative to ``max(1, max |eager logit|)``,
    on random batches of the given sizes. ``fmt``: ``onnx`` or ``pt2``."""
    run = {"onnx": _onnx_runner, "pt2": _pt2_runner}[fmt](path)
    gen = torch.Generator().manual_seed(seed)
    module = _graph_module(model, views).eval()
    worst = 0.0
    for batch in batches:
        video = example_input(model, batch=batch, views=views, generator=gen)
        with torch.no_grad():
            want = module(video)
        want = want if isinstance(want, tuple) else (want,)
        got = run(video)
        if len(got) != len(want):
            raise RuntimeError(f"{path}: {len(got)} outputs, expected {len(want)}")
        scale = max(1.0, float(want[-1].abs().max()))
        for g, w in zip(got, want):
            if tuple(g.shape) != tuple(w.shape):
                raise RuntimeError(f"{path}: output shape {tuple(g.shape)}, expected {tuple(w.shape)}")
            worst = max(worst, float((g.float() - w.float()).abs().max()) / scale)
    return worst


# ----------------------------------------------------------------------------- command line

def parse_views_count(text: str) -> int:
    """``"1"``, ``"6"`` or ``"CROPSxCLIPS"`` (``"3x2"`` = 6 views) -> the number of views."""
    try:
        if "x" in text.lower() or "*" in text:
            crops, clips = (int(v) for v in text.lower().replace("*", "x").split("x"))
            value = crops * clips
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views {text!r}: expected a number of views (1) or CROPSxCLIPS "
                                         "(3x2)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--views {text!r}: must be >= 1")
    return value


def _format_of(fmt: Optional[str], out: str) -> str:
    if fmt:
        return fmt
    ext = os.path.splitext(out)[1].lower()
    if ext in (".onnx", ".pt2"):
        return ext[1:]
    raise ValueError(f"--out {out}: cannot tell the format from the name; pass --format onnx|pt2|folder")


def _load(checkpoint: str, cfg_name: Optional[str], overrides: Sequence[str]):
    """``(model, cfg, classes)`` on the CPU in eval mode, from a checkpoint file (tdsk's or an
    official one with ``--cfg``) or a model folder (``tdsk.models.from_pretrained``)."""
    if os.path.isdir(checkpoint):
        try:
            from tdsk.models.pretrained import load_pretrained
        except ImportError:
            raise IsADirectoryError(f"--checkpoint {checkpoint}: is a directory, expected a checkpoint file") from None
        recipe = None
        if cfg_name or overrides:
            from tdsk.config import apply_overrides, load_config

            recipe = (load_config(cfg_name, overrides) if cfg_name
                      else apply_overrides(dict(load_pretrained(checkpoint)[1]), overrides))
        model, cfg, classes, _ = load_pretrained(checkpoint, recipe=recipe, device="cpu")
        return model, cfg, classes
    from tdsk.cli._common import load_for_inference

    return load_for_inference(checkpoint, cfg_name, overrides, device="cpu")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    p = argparse.ArgumentParser(prog="python -m tdsk.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="tdsk checkpoint (best.pt, epoch_*.pt), official TDS-CLIP file (with --cfg), or model folder")
    p.add_argument("--format", choices=FORMATS, help="default: from the --out extension (.onnx, .pt2)")
    p.add_argument("--out", required=True, help="output file (onnx, pt2) or folder (folder)")
    p.add_argument("--cfg", help="recipe (default: the one stored in a tdsk checkpoint; needed for official ones)")
    p.add_argument("--views", type=parse_views_count, default=1,
                   help="views per video in the graph: 1 (default; input [B,T,M,3,H,W], output logits) or "
                        "V / CROPSxCLIPS (input [B,V,T,M,3,H,W], outputs probs averaged over views and logits)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: torch.onnx's)")
    p.add_argument("--labels", help="class names, one per line (stored in the metadata / the folder)")
    p.add_argument("--classes", metavar="FILE",
                   help="open vocabulary: switch a text classifier to these classes (any class-name file) before "
                        "exporting; their text embeddings are baked into the graph (docs/protocols.md)")
    p.add_argument("--no-check", action="store_true", help="do not run the exported file against the eager model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that tdsk did not write (never an input)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    args = p.parse_args(argv)

    def usage_error(message) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        fmt = _format_of(args.format, args.out)
    except ValueError as exc:
        return usage_error(exc)
    if fmt == "folder" and args.views != 1:
        return usage_error("--views applies to the onnx and pt2 formats (a model folder stores the model itself)")
    if fmt != "folder" and os.path.isdir(args.out):
        return usage_error(f"--out {args.out}: is a directory, expected a file name for --format {fmt}")
    if args.labels and args.classes:
        return usage_error("--labels (names stored) and --classes (the classes scored): give one")
    for flag, path in (("--labels", args.labels), ("--classes", args.classes)):
        if path and not os.path.isfile(path):
            return usage_error(f"{flag} {path}: no such file")
    if not os.path.exists(args.checkpoint):
        return usage_error(f"--checkpoint {args.checkpoint}: no such file")
    from tdsk._paths import PathCollisionError, check_distinct, check_not_inside, check_replaceable

    inputs = {"--checkpoint": args.checkpoint, "--labels": args.labels, "--classes": args.classes}
    try:
        check_distinct({"--out": args.out}, inputs)
        if fmt == "folder":
            if os.path.lexists(args.out) and not os.path.isdir(args.out):
                raise FileExistsError(f"--out {args.out}: exists and is not a folder (--format folder writes a folder)")
            check_not_inside(args.out, "--out", inputs)
        check_replaceable(args.out, "--out", args.overwrite)
    except (PathCollisionError, FileExistsError) as exc:
        return usage_error(exc)
    if fmt == "onnx":
        try:
            _import_onnx_exporter()
        except ImportError as exc:
            return usage_error(exc)

    from tdsk.cli._common import read_labels, user_errors

    try:
        model, cfg, classes = _load(args.checkpoint, args.cfg, args.overrides)
        if args.labels:
            classes = read_labels(args.labels)
        if args.classes:
            from tdsk.models.open_vocab import use_classes

            classes = use_classes(model, read_labels(args.classes), f"--classes {args.classes}")
            cfg = {**cfg, "model": {**cfg["model"], "num_classes": len(classes)}}
    except user_errors(loading=True) as exc:
        return usage_error(exc)
    if classes is not None and len(classes) != model.num_classes:
        return usage_error(f"{len(classes)} class names for a model with {model.num_classes} classes")

    if fmt == "folder":
        try:
            export_folder(model, args.out, classes, cfg, overwrite=args.overwrite)
        except OSError as exc:  # read-only parent, disk full: one line, nothing half-written
            return usage_error(f"--out {args.out}: {exc}")
        print(f"wrote model folder {args.out}")
        return 0
    meta = export_metadata(model, args.views, classes, cfg)
    try:
        if fmt == "onnx":
            export_onnx(model, args.out, args.views, args.opset, meta)
        else:
            export_pt2(model, args.out, args.views, meta)
    except OSError as exc:
        return usage_error(f"--out {args.out}: {exc}")
    from tdsk._paths import record_written

    folder, base = os.path.split(os.path.abspath(args.out))
    record_written(folder, [n for n in (base, base + ".data") if os.path.isfile(os.path.join(folder, n))], "export")
    inputs = ", ".join(f"{k} {v['dtype']}[{', '.join(map(str, v['shape']))}]" for k, v in meta["inputs"].items())
    outputs = ", ".join(f"{k} {v['dtype']}[{', '.join(map(str, v['shape']))}]" for k, v in meta["outputs"].items())
    print(f"wrote {args.out} ({fmt}, {os.path.getsize(args.out) / 2 ** 20:.1f} MiB): {inputs} -> {outputs}")
    if args.no_check:
        return 0
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("check skipped: onnxruntime is not installed")
            return 0
    err = check_export(args.out, fmt, model, args.views)
    ok = err <= CHECK_TOLERANCE
    print(f"check: max |exported - eager| = {err:.2e} x max(1, max |logit|) on a random batch of "
          f"{_EXAMPLE_BATCH} ({'ok' if ok else 'FAILED'}, tolerance {CHECK_TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
