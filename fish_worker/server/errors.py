"""Errors of the HTTP doors, and how a job's error text maps to an HTTP status."""

from __future__ import annotations

# Job errors that are our fault rather than the caller's (see fish_worker/jobs.py).
_SERVER_FAULT_PREFIXES = ("internal error", "conversation store unavailable")


class ApiError(Exception):
    """An error answer; each door's handler renders it in that door's shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def job_error_status(message: str) -> int:
    """400 for a bad request (the runner's "<field>: <problem>"), 500 for a fault of ours."""
    return 500 if message.startswith(_SERVER_FAULT_PREFIXES) else 400
