"""The library logger stays quiet until an application configures it; the tools print ``[tdsk]`` lines."""
import logging
import subprocess
import sys


def test_library_logger_has_a_null_handler_and_no_output(capfd):
    code = ("import logging, tdsk._logging as L; "
            "assert any(isinstance(h, logging.NullHandler) for h in L.logger.handlers); "
            "L.logger.info('quiet info'); L.logger.warning('quiet warning')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "" and out.stdout == ""


def test_cli_logging_prints_to_current_stderr_once(capsys):
    from tdsk._logging import _StderrHandler, configure_cli_logging, logger

    before = list(logger.handlers), logger.level
    try:
        configure_cli_logging()
        configure_cli_logging()
        assert sum(isinstance(h, _StderrHandler) for h in logger.handlers) == 1
        logger.info("hello from a tool")
        assert capsys.readouterr().err == "[tdsk] INFO: hello from a tool\n"
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])
    assert logging.getLogger("tdsk").level == before[1]


def test_one_off_notices_reach_stderr_once_when_nothing_is_configured():
    """Fallback notices keep the design rule "fall back and say so once" for library users."""
    code = ("import tdsk._logging as L; L.log_once('k', 'fell back to X'); L.log_once('k', 'fell back to X'); "
            "L.logger.info('per-step info stays quiet')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "[tdsk] INFO: fell back to X\n"
