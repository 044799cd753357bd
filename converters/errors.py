"""The one exception type every stage raises for a problem the user can fix.

The CLI turns it into a single stderr line and an exit code; anything else is a bug.
"""


class UserError(Exception):
    """Bad input or environment: printed as one line, exit code `code` (2 usage, 1 runtime)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class UsageError(UserError):
    def __init__(self, message: str):
        super().__init__(message, code=2)
