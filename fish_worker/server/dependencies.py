"""What the routes are given, by type: `limiter: Limiter` in a route's signature is the app's JobLimiter.

create_app (app.py) builds each of these once and keeps it on `app.state`; nothing else reads
`app.state`. Routes declare what they need,

    async def run(body: RunRequest, request: Request, limiter: Limiter): ...

and code holding the app (tests, the bench) asks with the `*_of(app)` functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from fish_worker.asr.transcriber import Transcriber
from fish_worker.server.body_admission import BodyBudget
from fish_worker.server.limiter import JobLimiter
from fish_worker.server.registry import JobRegistry
from fish_worker.server.v2_jobs import V2Jobs
from fish_worker.settings import Settings
from fish_worker.tts.service import TTSService


def settings_of(app: FastAPI) -> Settings:
    """The Settings the app was built from."""
    return app.state.settings


def limiter_of(app: FastAPI) -> JobLimiter:
    """Admission and generation slots for every door's work."""
    return app.state.limiter


def registry_of(app: FastAPI) -> JobRegistry:
    """The /v2 jobs: queued, running and finished, by id."""
    return app.state.registry


def v2_jobs_of(app: FastAPI) -> V2Jobs:
    """RunPod's /v2 jobs as every route sees them: this process's registry, or Redis shared by replicas."""
    return app.state.v2_jobs


def on_ready_of(app: object) -> Callable[[], Awaitable[None]] | None:
    """The app's background start (taking queued /v2 jobs), run on the serving loop once it is built."""
    return getattr(getattr(app, "state", None), "on_ready", None)


def on_stop_of(app: object) -> Callable[[], Awaitable[None]] | None:
    """The app's background stop (hand back taken /v2 jobs, free Redis places), run when the server stops."""
    return getattr(getattr(app, "state", None), "on_stop", None)


def tts_of(app: FastAPI) -> TTSService:
    """The speech service the OpenAI and Fish doors call directly (the JobRunner's own)."""
    return app.state.tts


def transcriber_of(app: FastAPI) -> Transcriber | None:
    """Speech in for the transcription doors (the JobRunner's own); None when no recognizer is configured."""
    return app.state.transcriber


def body_budget_of(app: FastAPI) -> BodyBudget:
    """The bytes of request bodies in flight (BodyAdmissionMiddleware's)."""
    return app.state.body_budget


# For routes; HTTPConnection serves both HTTP requests and the live WebSocket.
def _settings(connection: HTTPConnection) -> Settings:
    return settings_of(connection.app)


def _limiter(connection: HTTPConnection) -> JobLimiter:
    return limiter_of(connection.app)


def _registry(connection: HTTPConnection) -> JobRegistry:
    return registry_of(connection.app)


def _v2_jobs(connection: HTTPConnection) -> V2Jobs:
    return v2_jobs_of(connection.app)


def _tts(connection: HTTPConnection) -> TTSService:
    return tts_of(connection.app)


def _transcriber(connection: HTTPConnection) -> Transcriber | None:
    return transcriber_of(connection.app)


AppSettings = Annotated[Settings, Depends(_settings)]
Limiter = Annotated[JobLimiter, Depends(_limiter)]
Registry = Annotated[JobRegistry, Depends(_registry)]
V2JobStore = Annotated[V2Jobs, Depends(_v2_jobs)]
Speech = Annotated[TTSService, Depends(_tts)]
Transcription = Annotated[Transcriber | None, Depends(_transcriber)]
