"""Values quoted in error messages, cut to a readable length.

A crafted file can hold a value whose full repr is gigabytes (a list nested in itself through
YAML aliases or pickle memo references): messages quote such values through `short_repr`,
whose cost is bounded by what it prints, never by the value's expanded size.
"""
from __future__ import annotations

import reprlib

MESSAGE_LIMIT = 400  # characters of any one quoted value or message

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 8
_REPR.maxdict = 6
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40


def cut(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text`, or its first `limit` characters and a note of how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(value, limit: int = 120) -> str:
    """repr(value) at most about `limit` characters long, whatever the value holds."""
    try:
        text = _REPR.repr(value)
    except Exception:  # e.g. an int past Python's digit limit for str()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."
