"""Errors of the HTTP doors: one shape per door, whatever raised them, and error kind → HTTP status.

Seed (/run) and RunPod (/v2) doors: `{"id": ..., "status": "error", "error": "..."}`.
OpenAI door (/v1): `{"error": {"message", "type", "param", "code"}}`, as the `openai` client expects.
Fish Audio door (/v1/tts, /v1/tts/live, /model): Fish's own `{"status": <code>, "message": "..."}`;
`fishaudio` reads `message`, and the older `fish_audio_sdk` builds its error from exactly these two keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from fish_worker.errors import ErrorKind, JobInputError, WorkerError, first_problem
from fish_worker.jobs.inputs import check_encodable
from fish_worker.server.disconnect import ClientGone

log = logging.getLogger(__name__)

# Every door answers an error of a kind (fish_worker/errors.py) with this status.
STATUS_OF_KIND: dict[ErrorKind, int] = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,  # another tenant's voice is the same as one never saved
    ErrorKind.TOO_LARGE: 413,  # a RunPod result limit; the server's own doors have none
    ErrorKind.BUSY: 429,
    ErrorKind.UNAVAILABLE: 500,  # the conversation store (500, as before kinds; 503 would say it better)
    ErrorKind.INTERNAL: 500,
}
_MAX_ECHO = 100  # characters of a caller's input an error may repeat


class ApiError(Exception):
    """An error answer; rendered in the shape of the door the request came through."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.job_id = job_id
        self.headers = headers


def status_of(kind: ErrorKind) -> int:
    return STATUS_OF_KIND[kind]


def api_error(exc: WorkerError, fields: Mapping[str, str] | None = None) -> ApiError:
    """`exc` as an error answer with the status of its kind; `fields` renames the service's field
    names into the door's own ("message" → "input")."""
    field = exc.field if exc.field is None else (fields or {}).get(exc.field, exc.field)
    message = f"{field}: {exc.problem}" if isinstance(exc, JobInputError) else exc.message
    return ApiError(status_of(exc.kind), message, param=field)


# Fish Audio's API paths, served or not (/wallet is the SDK's, answered 404 here): an error on any of
# them is Fish-shaped, so the SDK reports the message rather than failing to parse it.
_FISH_PATHS = ("/v1/tts", "/model", "/v1/asr", "/wallet")


def refuse_invalid_unicode(fields: Mapping[str, Any]) -> None:
    """ApiError 400 naming the first string in `fields` (at any depth) that is not valid unicode: the
    RunPod extras beside a job's input and ignored fields are refused like the input (jobs/inputs.py)."""
    try:
        check_encodable(dict(fields))
    except JobInputError as exc:
        raise api_error(exc) from None


def is_fish_path(path: str) -> bool:
    return path in _FISH_PATHS or path.startswith(tuple(f"{prefix}/" for prefix in _FISH_PATHS))


def error_body(
    path: str, status: int, message: str, param: str | None = None, job_id: str | None = None
) -> dict[str, Any]:
    if is_fish_path(path):
        return {"status": status, "message": message}
    if path.startswith("/v1/"):
        kind = (
            "authentication_error"
            if status == 401
            else "rate_limit_error"
            if status == 429
            else "invalid_request_error"
            if status < 500
            else "server_error"
        )
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return {"id": job_id, "status": "error", "error": message}


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    param: str | None = None,
    job_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param, job_id), status_code=status, headers=headers)


async def deny_websocket(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    """Refuse a WebSocket before its handshake: an HTTP answer in the door's shape where the server can
    send one (uvicorn can: the websocket.http.response extension), else a close, which servers answer 403."""
    await receive()  # "websocket.connect": the ASGI server's first message, whatever the answer
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(scope["path"], status, message, headers=headers)(scope, receive, send)
    else:
        code = 1013 if status == 429 else 1008  # "try again later" / "policy violation"
        await send({"type": "websocket.close", "code": code, "reason": message[:_MAX_ECHO]})


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking Exception; it calls each with the class it is added for.
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(
        request.url.path, exc.status, exc.message, param=exc.param, job_id=exc.job_id, headers=exc.headers
    )


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody is there to read it


# FastAPI's answer when reading a body raises anything but json.JSONDecodeError: invalid UTF-8
# (UnicodeDecodeError), deep nesting (RecursionError), a 5000-digit integer (ValueError).
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404 and exc.detail == "Not Found":  # the router's: no such path
        message = f"no such path: {request.method} {request.url.path[:_MAX_ECHO]}"
    elif exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:  # not json.JSONDecodeError
        message = "body: is not valid JSON (not UTF-8, nested too deep, or a number too long to read)"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path[:_MAX_ECHO]}" + (
            f"; use {allowed}" if allowed else ""
        )
    else:
        message = str(exc.detail)
    return error_response(request.url.path, exc.status_code, message, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers 422; the seed contract says bad input is 400.
    message, param = _validation_message(exc.errors())
    return error_response(request.url.path, 400, message, param=param)


def _validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """("<field>: <problem>", field) for the first problem of a request, read as every door reads one."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        where = next((p for p in first["loc"] if isinstance(p, int)), None)
        reason = (first.get("ctx") or {}).get("error", "not valid JSON")
        at = f" at character {where}" if where is not None else ""
        return f"body: invalid JSON{at}: {reason}", "body"
    field, problem, _ = first_problem(errors, skip=("body",), whole="body")
    return f"{field}: {problem}", field


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, f"internal error: {type(exc).__name__}")
