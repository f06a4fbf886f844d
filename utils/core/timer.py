"""The one wall-clock timer (``time.perf_counter``), for the "done in ... s" log lines, epoch times, search time and
latency measurements."""
from __future__ import annotations

import time


class Timer:
    """Wall-clock seconds since the timer started: at creation, or again on entering a ``with`` block.

    ``seconds`` reads the clock while the timer runs; a ``with`` block stops it on exit, and ``seconds`` then
    stays the block's duration::

        timer = Timer()              # running
        ...; log(timer.seconds)      # seconds so far

        with Timer() as timer:
            work()
        total += timer.seconds       # seconds the block took
    """

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._stop: float | None = None

    def __enter__(self) -> Timer:
        self._start, self._stop = time.perf_counter(), None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds (>= 0) from the start to the stop, or to now while the timer runs."""
        end = self._stop if self._stop is not None else time.perf_counter()
        return end - self._start
