"""Logging helpers: one logger for the package, and messages said only once.

The library logs to the ``tdsk`` logger, which has a ``NullHandler`` as the ``logging``
how-to asks of libraries: an application decides what is shown. One-off notices
(:func:`log_once`: a fallback, the attention backend) still reach stderr once when nothing is
configured. The
command-line tools call :func:`configure_cli_logging` in their ``main()`` and print
``[tdsk] LEVEL: message`` lines on stderr.
"""
import logging
import sys

logger = logging.getLogger("tdsk")
logger.addHandler(logging.NullHandler())

_said = set()


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at import: tests and tools swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream; the stream is always sys.stderr
        pass


def configure_cli_logging(level: int = logging.INFO) -> None:
    """Show the package's messages at ``level`` and above on stderr (once per process; for tools)."""
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[tdsk] %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def _configured() -> bool:
    """Whether a handler other than the NullHandler would receive the package's records."""
    own = any(not isinstance(h, logging.NullHandler) for h in logger.handlers)
    return own or (logger.propagate and bool(logging.getLogger().handlers))


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process.

    These are the one-off notices (an optional part missing and its fallback, the attention
    backend, a random CLIP): when nothing is configured to show the package's log, they are
    written to stderr anyway, once, so a library user is told (the design rule "fall back and
    say so once"); the per-step log stays silent until an application configures logging."""
    if key in _said:
        return
    _said.add(key)
    if _configured():
        logger.log(level, message)
    elif level >= logging.INFO:
        print(f"[tdsk] {logging.getLevelName(level)}: {message}", file=sys.stderr, flush=True)
