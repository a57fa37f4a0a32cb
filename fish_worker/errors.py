"""Errors a job can end with. Their text is what the caller sees in `{"error": ...}`; their `kind`
is what each door maps to its status code (server/errors.py), so no door parses the text back.

Every error and log line that shows part of a request goes through `shown()` / `bounded()`, so a
1 MB `action` or a 100k-character `voice_id` never comes back (or into the logs) whole, and text
that cannot be encoded (a lone surrogate) is escaped rather than breaking the result's JSON.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pydantic import ValidationError

SHOWN_CHARS = 100  # most characters of an input value an error or log line repeats
MESSAGE_CHARS = 300  # most characters of any job error message
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def bounded(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters (saying how long it was), with unencodable characters escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 30)]}… ({len(text)} characters)"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """An input value as an error quotes it: its repr, at most about `limit` characters."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 10:
        return f"{type(value).__name__} of {len(value)} items"
    return bounded(repr(value), limit + 30)


def field_path(parts: Sequence[str | int], *, brackets: bool = False, whole: str = "input") -> str:
    """Where in the input: "message", "extra.deep.1"; a key that is not a plain name is quoted ("''.x").
    `brackets`: list indexes as the Fish doors write them, "references[0].audio"; `whole`: the name of
    the input itself (no parts)."""
    shown_parts = [str(p) if isinstance(p, int) or _PLAIN_NAME.fullmatch(str(p)) else shown(str(p), 40) for p in parts]
    if brackets:
        return (
            "".join(f"[{s}]" if isinstance(p, int) else f".{s}" for p, s in zip(parts, shown_parts)).lstrip(".")
            or whole
        )
    return ".".join(shown_parts) or whole


class Problem(NamedTuple):
    """pydantic's first complaint about an input, in the words every door repeats."""

    field: str  # where: "temperature", "references[0].audio"
    problem: str  # what: "Input should be less than or equal to 1"
    type: str  # pydantic's error type ("less_than_equal", "extra_forbidden", ...), for a caller's own wording


def first_problem(
    errors: "ValidationError | Sequence[Mapping[str, Any]]",
    *,
    brackets: bool = False,
    skip: Collection[str | int] = (),
    whole: str = "input",
) -> Problem:
    """The one reading of a pydantic error, for every door and file (FastAPI's RequestValidationError
    gives its `errors()` list). `brackets` and `whole` as in `field_path`; `skip`: location parts that are
    not the caller's field names (FastAPI's "body")."""
    if not isinstance(errors, Sequence):
        errors = errors.errors(include_url=False)
    first = errors[0]
    field = field_path([part for part in first["loc"] if part not in skip], brackets=brackets, whole=whole)
    kind = str(first.get("type", ""))
    problem = str(first["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        problem = "unknown field"
    elif kind == "string_unicode" and isinstance(first.get("input"), str):
        try:  # a lone surrogate (a form's charset can make one): said as every door says it (jobs/inputs.py)
            first["input"].encode("utf-8")
        except UnicodeEncodeError as exc:
            problem = f"contains invalid unicode (lone surrogate) at position {exc.start}"
    return Problem(bounded(field, SHOWN_CHARS), bounded(problem), kind)


class ErrorKind(Enum):
    """What went wrong, in the terms a door needs to answer it (HTTP status, error type)."""

    BAD_INPUT = "bad_input"  # the caller must change the request; `field` names what
    NOT_FOUND = "not_found"  # the request names something that does not exist (for this caller)
    TOO_LARGE = "too_large"  # the result would be over the platform's limit
    BUSY = "busy"  # too many jobs now: try again later
    UNAVAILABLE = "unavailable"  # something the job needs (the conversation store) cannot be used
    INTERNAL = "internal"  # a fault of ours


class WorkerError(Exception):
    """An error a job ends with: its `kind`, the input `field` it blames (if any), and its message."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, kind: ErrorKind | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.field = field

    @property
    def message(self) -> str:
        return str(self)


class JobInputError(WorkerError, ValueError):
    """The request is wrong (BAD_INPUT); the message starts with the offending field."""

    kind = ErrorKind.BAD_INPUT

    def __init__(self, field: str, problem: str):
        field = bounded(field, SHOWN_CHARS)
        problem = bounded(problem, MESSAGE_CHARS - len(field) - 2)
        super().__init__(f"{field}: {problem}", field=field)
        self.problem = problem


def input_error(exc: "ValidationError", *, brackets: bool = False, whole: str = "input") -> JobInputError:
    """The first problem pydantic found, as JobInputError("<field>: <what is wrong>") (see first_problem)."""
    field, problem, _ = first_problem(exc, brackets=brackets, whole=whole)
    return JobInputError(field, problem)


class NotFoundError(JobInputError):
    """The request names something (a saved voice) that does not exist for this caller: NOT_FOUND."""

    kind = ErrorKind.NOT_FOUND


@dataclass(frozen=True)
class JobFailure:
    """How a job ended when it failed: what a door needs to answer it, without parsing the message."""

    kind: ErrorKind
    message: str
    field: str | None = None

    @classmethod
    def of(cls, error: WorkerError) -> "JobFailure":
        return cls(error.kind, bounded(error.message), error.field)
