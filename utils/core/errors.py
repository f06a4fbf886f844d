"""The one exception type for bad user input; scripts turn it into ``error: ...`` and exit code 2."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (unknown name, missing file, impossible value): message says what to do."""


class ReportedError(UsageError):
    """A usage error whose ``error:`` line was already printed (by a stage a pipeline ran): exit 2, no more."""


class ForeignMasks(UsageError):
    """A checkpoint whose masks are of another granularity than the stage's; ``found`` names theirs (the command
    line adds which scripts take such a checkpoint)."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found
