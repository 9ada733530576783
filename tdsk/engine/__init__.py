"""Training engine: the loop (:mod:`.trainer`), optimizer and schedule (:mod:`.optim`),
checkpoints (:mod:`.checkpoint`), evaluation (:mod:`.evaluation`), metrics and plots
(:mod:`.metrics`) and DDP plumbing (:mod:`.distributed`).

The command-line entry points are :mod:`tdsk.train`, :mod:`tdsk.evaluate` and
:mod:`tdsk.predict`.
"""
from tdsk.engine.trainer import NonFiniteLossError, RunResult, fit

__all__ = ["fit", "RunResult", "NonFiniteLossError"]
