"""Logging helpers: one logger for the package, and messages said only once."""
import logging

logger = logging.getLogger("tdsk")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[tdsk] %(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_said = set()


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key in _said:
        return
    _said.add(key)
    logger.log(level, message)
