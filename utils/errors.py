"""The one exception type for bad user input; scripts turn it into ``error: ...`` and exit code 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, missing file, impossible value): message says what to do."""
