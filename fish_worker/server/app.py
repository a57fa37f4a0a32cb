"""The self-hosted server: one JobRunner behind three doors (seed /run, RunPod /v2, OpenAI /v1)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fish_worker.jobs import JobRunner
from fish_worker.server import openai_door, runpod_door, seed_door
from fish_worker.server.config import ServerSettings
from fish_worker.server.errors import ApiError
from fish_worker.server.gate import GatedRunner
from fish_worker.server.registry import JobRegistry


def create_app(runner: JobRunner, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    app = FastAPI(
        title="Fish Speech TTS",
        description="Self-hosted Fish Speech: the seed /run API, RunPod's /v2 API and OpenAI's /v1/audio/speech.",
        version="1.0",
    )
    app.state.server_settings = settings
    app.state.runner = GatedRunner(runner, settings.max_concurrent_jobs or runner.service.max_concurrency)
    app.state.registry = JobRegistry(app.state.runner, settings.job_ttl_s)
    app.include_router(seed_door.router)
    app.include_router(runpod_door.router)
    app.include_router(openai_door.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def _error_json(request: Request, status: int, message: str, param: str | None = None) -> JSONResponse:
    """The error in the shape of the door the request came through."""
    path = request.url.path
    if path.startswith("/v1/"):
        kind = "authentication_error" if status == 401 else "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    elif path.startswith("/v2/"):
        body = {"error": message}
    else:
        body = {"id": None, "status": "error", "error": message}
    return JSONResponse(body, status_code=status)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_json(request, exc.status, exc.message, exc.param)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI answers 422; the seed contract says bad input is 400.
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    return _error_json(request, 400, f"{where}: {first['msg']}", param=where)
