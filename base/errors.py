"""The one user-facing error, and reading MindSpore's errors (its RuntimeErrors bury the useful
line under a generic one)."""
from __future__ import annotations


class UserError(Exception):
    """A bad input or a fault the user can fix: its text is `PATH: what`. Every package's errors
    derive from it, and the command line catches it once, printing `error: PATH: what` (exit 2)."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(message if path is None else f"{path}: {message}")



def mindspore_detail(err: Exception) -> str:
    """The informative line of a MindSpore RuntimeError (its first line is generic; the
    `[ERROR] ...` line holds the reader's or writer's own message)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("[ERROR]")), lines[0] if lines else type(err).__name__)
    return detail.replace("[ERROR]", "").replace("[Internal ERROR]", "").strip()
