"""The steps of the GPU device run (``bench/gpu/run.sh`` calls them in order; docs/gpu-run.md).

Each step is one command that adds its numbers to ``OUT/results.json`` as soon as it has
them (after every measured row), so a step cut off by its time box still leaves what it
measured::

    python bench/gpu/device_run.py describe  OUT [--dry-run]   # first line: versions, devices
    python bench/gpu/device_run.py ceilings  OUT [--dry-run]   # copy bandwidth, bf16 matmul rate
    python bench/gpu/device_run.py ops       OUT [--dry-run]   # tdsk vs reference vs torch.compile(reference)
    python bench/gpu/device_run.py train     OUT [--dry-run] [--official PATH]   # B/16 training step
    python bench/gpu/device_run.py modules   OUT [--dry-run] [--official PATH]   # TD-Adapter, SME stem
    python bench/gpu/device_run.py inference OUT [--dry-run] [--official PATH]   # clips/s at 3x2 views
    python bench/gpu/device_run.py attention OUT [--dry-run]   # side attention: xformers vs SDPA
    python bench/gpu/device_run.py loader    OUT [--dry-run]   # DALI vs PyAV loader
    python bench/gpu/device_run.py mark      OUT STEP STATUS RC SECONDS BOX [--doctor F] [--junit F]
    python bench/gpu/device_run.py report    OUT               # results.md + results.png

``--dry-run`` shrinks every size so that the whole sequence runs on a CPU (timings are then
meaningless; what is rehearsed is that every step runs and records). ``--official PATH``
is a local copy of the official TDS-CLIP repository (BBYL9413/TDS-CLIP); only its
``clip/model.py`` is loaded (by file path; nothing of it is copied into tdsk). Without it
the official rows are skipped with a message.

Timing: ``triton.testing.do_bench`` medians on CUDA (L2 flushed between runs); training and
inference steps are timed one by one with CUDA events (median of the timed steps); on a
CPU, wall-clock medians. Every model here has random weights (``clip_pretrained=None``):
speed and memory do not depend on the values.

One module per step group (this file only dispatches): ``steps_env`` (describe, ceilings),
``steps_ops``, ``steps_model`` (train, modules, inference), ``steps_io`` (attention, loader),
``steps_kernels`` (kernels, userpath), ``render`` (mark, report); ``runlib`` holds the results
file and timing, ``official`` the official modules; op shapes and the CUDA timer are shared with
the pytest benchmarks through ``bench/benchlib.py``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from render import markdown  # noqa: E402,F401  (the report's renderer, imported by tests)
from runlib import error_text, note  # noqa: E402,F401

STEP_MODULES = {
    "describe": "steps_env", "ceilings": "steps_env", "ops": "steps_ops", "train": "steps_model",
    "modules": "steps_model", "inference": "steps_model", "attention": "steps_io", "loader": "steps_io",
    "kernels": "steps_kernels", "userpath": "steps_kernels", "mark": "render", "report": "render",
}



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("describe", "ceilings", "ops", "train", "modules", "inference", "attention", "loader",
                 "kernels", "userpath"):
        p = sub.add_parser(name)
        p.add_argument("out")
        p.add_argument("--dry-run", action="store_true", help="shrink every size (CPU rehearsal)")
        p.add_argument("--official", default=None, help="local copy of BBYL9413/TDS-CLIP")
    p = sub.add_parser("mark")
    for a in ("out", "step", "status", "rc", "seconds", "box"):
        p.add_argument(a)
    p.add_argument("--doctor", default=None)
    p.add_argument("--junit", default=None)
    p = sub.add_parser("report")
    p.add_argument("out")
    args = parser.parse_args(argv)
    fn = getattr(importlib.import_module(STEP_MODULES[args.cmd]), f"cmd_{args.cmd}")
    try:
        return fn(args)
    except Exception:
        traceback.print_exc()
        try:
            note(args.out, args.cmd, "step failed: " + traceback.format_exc().strip().splitlines()[-1])
        except Exception:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
