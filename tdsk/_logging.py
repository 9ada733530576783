"""Logging helpers: one logger for the package, and messages said only once.

The library only logs (to the ``tdsk`` logger, which has a ``NullHandler`` as the
``logging`` how-to asks of libraries): an application decides what is shown. The
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


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key in _said:
        return
    _said.add(key)
    logger.log(level, message)
