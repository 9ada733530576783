"""``python -m tdsk.doctor``: check a tdsk installation on every device it finds.

Prints a short report:

1. the versions of Python, torch (with CUDA and cuDNN), Triton, open_clip, DALI,
   xformers and PyAV;
2. each device found (the CPU, every CUDA GPU);
3. which implementation serves each op on each device (C++, Triton or the pure-PyTorch
   reference for the temporal-difference ops; xformers or SDPA for the side attention;
   DALI or PyAV for video decoding) and, for every fallback, why (no compiled
   ``tdsk._C`` for this Python, Triton missing, ``TDSK_DISABLE_*`` set, ...);
4. a self-test on every device: both ops forward and backward against
   :mod:`tdsk.ops.reference` in every supported dtype (the tolerances of the op tests,
   :data:`OP_TOLERANCES`), the side attention (SDPA, and xformers on CUDA when it
   loads) against a float64 reference, a DALI decode of a tiny VP9 clip generated at
   run time with PyAV (when DALI is installed), and one forward of the tiny model.

A few seconds on a CPU. Exit code 0 when every check passed or was skipped, 1 when
one failed (its name is printed, e.g. ``temporal_pool_diff/cpu/float32``), 2 for a
usage error. ``--json`` prints one JSON object instead (for machines); ``--only``
and ``--device`` restrict the checks.

    python -m tdsk.doctor
    python -m tdsk.doctor --json > doctor.json
    python -m tdsk.doctor --only ops,attention --device cpu
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from tdsk.cli.doctor.environment import cpu_name, devices, driver_version, implementations, versions  # noqa: F401
from tdsk.cli.doctor.report import format_report
from tdsk.cli.doctor.selftest import (ATTENTION_TOLERANCES, CHECK_GROUPS, OP_TOLERANCES, Check,  # noqa: F401
                                      Mismatch, compare, make_test_clip, run_doctor)

__all__ = ["OP_TOLERANCES", "ATTENTION_TOLERANCES", "CHECK_GROUPS", "run_doctor", "format_report", "main",
           "versions", "devices", "implementations", "cpu_name", "compare", "Mismatch"]


def main(argv: Optional[List[str]] = None) -> int:
    from tdsk._logging import configure_cli_logging

    configure_cli_logging()
    parser = argparse.ArgumentParser(prog="python -m tdsk.doctor", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated check groups to run, of {','.join(CHECK_GROUPS)} (default: all)")
    parser.add_argument("--device", default="all",
                        help="run the self-test on: all (default), cpu, cuda, or one device such as cuda:1")
    args = parser.parse_args(argv)
    only = None
    if args.only:
        only = [g.strip() for g in args.only.split(",") if g.strip()]
        unknown = [g for g in only if g not in CHECK_GROUPS]
        if unknown:
            parser.error(f"--only: unknown group(s) {unknown}; choose from {list(CHECK_GROUPS)}")
    if args.device not in ("all", "cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device: expected all, cpu, cuda or cuda:N, got {args.device!r}")
    found = [d["name"] for d in devices()]
    if args.device != "all" and not any(n == args.device or n.split(":")[0] == args.device for n in found):
        parser.error(f"--device {args.device}: no such device here (found: {', '.join(found)})")
    # tdsk's once-only log lines (fallbacks, random CLIP init) say what the report says:
    # keep them out of it (errors still show).
    import logging

    tdsk_logger = logging.getLogger("tdsk")
    level = tdsk_logger.level
    tdsk_logger.setLevel(logging.ERROR)
    try:
        report = run_doctor(only=only, device=args.device)
    finally:
        tdsk_logger.setLevel(level)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
