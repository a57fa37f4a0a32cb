"""Errors a job can end with. Their text is what the caller sees in `{"error": ...}`.

Every error and log line that shows part of a request goes through `shown()` / `bounded()`, so a
1 MB `action` or a 100k-character `voice_id` never comes back (or into the logs) whole, and text
that cannot be encoded (a lone surrogate) is escaped rather than breaking the result's JSON.
"""

from __future__ import annotations

import re
from typing import Any

SHOWN_CHARS = 100  # most characters of an input value an error or log line repeats
MESSAGE_CHARS = 300  # most characters of any job error message
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def bounded(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters (saying how long it was), with unencodable characters escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 30)]}… ({len(text)} characters)"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """An input value as an error quotes it: its repr, at most about `limit` characters."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 10:
        return f"{type(value).__name__} of {len(value)} items"
    return bounded(repr(value), limit + 30)


def field_path(parts: tuple | list) -> str:
    """Where in the input: "message", "extra.deep.1"; a key that is not a plain name is quoted ("''.x")."""
    shown_parts = [str(p) if isinstance(p, int) or _PLAIN_NAME.fullmatch(str(p)) else shown(str(p), 40)
                   for p in parts]
    return ".".join(shown_parts) or "input"


class JobInputError(ValueError):
    """The request is wrong; the message starts with the offending field."""

    def __init__(self, field: str, problem: str):
        field = bounded(field, SHOWN_CHARS)
        problem = bounded(problem, MESSAGE_CHARS - len(field) - 2)
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
