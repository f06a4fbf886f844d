"""Logging: one logger, the run folder's log file, and the closing "wrote ... / next:" lines of a stage."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from utils.core.distributed import is_main_process

LOG = logging.getLogger("bridge")


def setup_logging(run_dir: Path | None = None, name: str = "log.txt") -> logging.Logger:
    """Log INFO lines to stderr and, when ``run_dir`` is given, append them to ``run_dir/name``. Ranks other
    than 0 of a ``torchrun`` launch log warnings only, and to stderr only (rank 0 writes the files)."""
    main = is_main_process()
    LOG.setLevel(logging.INFO if main else logging.WARNING)
    LOG.propagate = False
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    LOG.addHandler(console)
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = QuietFileHandler(run_dir / name)
        file_handler.setFormatter(fmt)
        LOG.addHandler(file_handler)
    return LOG


class QuietFileHandler(logging.FileHandler):
    """A log file that, when a line cannot be written (a full disk), says so once on stderr and stops writing:
    never logging's ``--- Logging error ---`` block with a traceback; the console keeps every line, and the
    stage's own write fails next with the one ``error:`` line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} "
                         f"({getattr(exc, 'strerror', None) or type(exc).__name__}); logging to the console only\n")
        LOG.removeHandler(self)
        with contextlib.suppress(OSError):
            self.close()


_SUMMARIES = {"on": True}  # off while pipeline.py runs the stages (it prints its own summary)


@contextlib.contextmanager
def inner_stage() -> Iterator[None]:
    """Within: stages run as parts of a larger job, so ``log_outputs`` stays quiet."""
    _SUMMARIES["on"] = False
    try:
        yield
    finally:
        _SUMMARIES["on"] = True


def log_outputs(written: Iterable[Path | str], next_command: str | None = None) -> None:
    """The last lines of a stage: every file or folder it wrote, then the natural next command (if any)."""
    if not _SUMMARIES["on"]:
        return
    LOG.info("wrote:")
    for path in written:
        LOG.info("  %s", path)
    if next_command:
        LOG.info("next: %s", next_command)
