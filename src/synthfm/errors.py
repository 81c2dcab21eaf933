"""One error type for bad input: a message naming the file/row/key, and the fix."""

from __future__ import annotations


class SynthfmError(Exception):
    """A user-facing error: what is wrong (naming the file, row or key) and how to fix it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message
