"""Ctrl-C outside a stage's own work: one line and exit status 130, never a traceback.

A stage script imports this module first (before torch, whose import takes about 2 s): until ``main`` runs, a
Ctrl-C ends the process at once with one line (nothing has been written yet). While ``main`` runs (``cli_main``),
the first Ctrl-C raises ``KeyboardInterrupt`` as usual (the stage says its one line) and ignores any further
Ctrl-C, so that a second one while the run winds down (``finally`` blocks, ``atexit`` callbacks) adds no
traceback. Standard library only.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[2]  # the folder of the stage scripts


def _starting(signum: int, frame: FrameType | None) -> None:
    """SIGINT before ``main``: one line, exit 130 (no Python clean-up that a second Ctrl-C could interrupt)."""
    sys.stderr.write("\ninterrupted (Ctrl-C) while starting: nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def _first_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGINT while ``main`` runs: ignore the ones after it, and interrupt the stage."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _is_stage_script() -> bool:
    """True when this process runs one of the stage scripts (not a test run or a library user)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    in_main_thread = threading.current_thread() is threading.main_thread()
    return main is not None and Path(main).resolve().parent == ROOT and in_main_thread


def quiet_start() -> None:
    """Until ``main`` runs, a Ctrl-C ends a stage script with one line and status 130."""
    if _is_stage_script():
        signal.signal(signal.SIGINT, _starting)


def interruptible_main() -> None:
    """While ``main`` of a stage script runs: the first Ctrl-C interrupts it, any later one is ignored."""
    if _is_stage_script():
        signal.signal(signal.SIGINT, _first_ctrl_c)


quiet_start()
