"""The one exception type for bad user input; scripts turn it into ``error: ...`` and exit code 2."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (unknown name, missing file, impossible value): message says what to do."""


class ReportedError(UsageError):
    """A usage error whose ``error:`` line was already printed (by a stage a pipeline ran): exit 2, no more."""
