"""The self-hosted server: one JobRunner behind four doors (seed /run, RunPod /v2, OpenAI /v1, Fish Audio).

Outermost first, a request meets: HeaderLimitMiddleware (431 for headers over 16 KiB), AuthMiddleware
(401 from the headers, body unread), BodyAdmissionMiddleware (a permit from the byte budget for bodies
before one is read: waits, or 429), BodyLimitMiddleware (413 / 408 while the body streams in), then the
doors. Every error, wherever it is raised, is answered in its door's shape (errors.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fish_worker.jobs.runner import JobRunner
from fish_worker.server.routers import (
    fish_asr,
    fish_live,
    fish_tts,
    openai_speech,
    openai_transcriptions,
    playground,
    runpod_v2,
    seed,
)
from fish_worker.server.auth import AuthMiddleware
from fish_worker.server.body_admission import BodyAdmissionMiddleware, BodyBudget
from fish_worker.server.body_limits import BodyLimitMiddleware
from fish_worker.server.errors import install_error_handlers
from fish_worker.server.header_limits import HeaderLimitMiddleware
from fish_worker.server.registry import JobRegistry
from fish_worker.server.shared_limits import SharedJobLimiter, make_job_limiter
from fish_worker.server.v2_jobs import make_v2_jobs
from fish_worker.settings import Settings


def create_app(runner: JobRunner, settings: Settings) -> FastAPI:
    """The app around `runner`, configured by `settings`: the Settings the runner was built from (the
    server section, plus the worker's max_concurrency and audio_max_bytes that the defaults follow)."""
    server = settings.server
    docs = server.enable_docs
    app = FastAPI(
        title="Fish Speech TTS",
        description="Self-hosted Fish Speech: the seed /run API, RunPod's /v2 API, OpenAI's /v1/audio/speech "
        "and /v1/audio/transcriptions, and Fish Audio's /v1/tts, /v1/tts/live, /v1/asr and /model.",
        version="1.0",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    # What the routes are given (server/dependencies.py): built once here, read nowhere else.
    app.state.settings = settings
    app.state.tts = runner.service
    app.state.transcriber = runner.transcriber
    # Counted across replicas in Redis when REDIS_URL is set (server/shared_limits.py), else in this process.
    app.state.limiter = limiter = make_job_limiter(runner, settings)
    app.state.registry = registry = JobRegistry(
        limiter, server.job_ttl_s, server.max_stored_jobs, server.max_stored_result_bytes
    )
    # /v2's jobs: this registry, or Redis shared by every replica when REDIS_URL is set. Its background
    # work (taking queued jobs) starts on the serving loop: app.state.on_ready (server/health.py).
    app.state.v2_jobs = make_v2_jobs(settings, limiter, registry)
    app.state.on_ready = lambda: _start_background(app)
    app.state.on_stop = lambda: _stop_background(app)  # as the server begins to shut down (SIGTERM)
    app.include_router(seed.router)
    app.include_router(runpod_v2.router)
    app.include_router(openai_speech.router)
    app.include_router(openai_transcriptions.router)
    app.include_router(fish_tts.router)
    app.include_router(fish_live.router)
    app.include_router(fish_asr.router)
    if server.playground:
        app.include_router(playground.router)
    app.add_api_route("/health", _health, methods=["GET"], tags=["health"], summary="Liveness (no key needed)")
    install_error_handlers(app)
    # Added last = outermost: authentication runs before anything reads the body, and a body is read
    # only under a permit (the tenant is known by then), whose holder's body is then bounded.
    max_body_bytes = server.body_limit(settings.audio_max_bytes)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes, body_timeout_s=server.body_timeout_s)
    total, per_tenant = server.body_budget(settings.audio_max_bytes)
    app.state.body_budget = BodyBudget(total, per_tenant, server.body_permit_wait_s, server.retry_after_s)
    app.add_middleware(BodyAdmissionMiddleware, budget=app.state.body_budget, max_body_bytes=max_body_bytes)
    app.add_middleware(AuthMiddleware, settings=server)
    app.add_middleware(HeaderLimitMiddleware)
    return app


async def _start_background(app: FastAPI) -> None:
    await app.state.v2_jobs.start()
    if isinstance(app.state.limiter, SharedJobLimiter):
        await app.state.limiter.start()


async def _stop_background(app: FastAPI) -> None:
    await app.state.v2_jobs.close()
    if isinstance(app.state.limiter, SharedJobLimiter):
        await app.state.limiter.close()


async def _health() -> dict[str, Any]:
    # Open to anyone: says the server is up, nothing about keys, tenants or jobs.
    return {"status": "ok"}
