"""RunPod's hosted API under /v2/{endpoint_id}/, so `runpod.Endpoint` works with its base URL here.

The endpoint id in the path is accepted whatever it is: this server is one endpoint. Each caller
sees only its own tenant's jobs: another tenant's job id answers 404, like an id that never existed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.dependencies import AppSettings, Limiter, Registry
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import ApiError, refuse_invalid_unicode
from fish_worker.server.json_body import json_response
from fish_worker.server.registry import FINAL, JobRecord, JobRegistry

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["RunPod API"], dependencies=[Depends(require_api_key)])


class RunPodRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # webhook, policy, s3Config: accepted, not acted on

    input: Any = Field(description="The job input, as the worker takes it.")


def _record(registry: JobRegistry, request: Request, job_id: str) -> JobRecord:
    record = registry.get(job_id, tenant_of(request))
    if record is None:
        raise ApiError(404, f"no job with id {job_id[:100]!r} (results are kept for FISH_JOB_TTL_S seconds)",
                       job_id=job_id[:100])
    return record


@router.post("/run", summary="Queue a job")
async def run(endpoint_id: str, body: RunPodRequest, request: Request, registry: Registry) -> dict[str, Any]:
    refuse_invalid_unicode(body.model_extra or {})  # the input itself is checked with the job's fields
    record = registry.submit(body.input, route="run", tenant=tenant_of(request))
    return {"id": record.id, "status": record.status}


@router.post("/runsync", summary="Run a job and wait for it (IN_PROGRESS after FISH_RUNSYNC_WAIT_S)")
async def runsync(endpoint_id: str, body: RunPodRequest, request: Request, registry: Registry,
                  settings: AppSettings) -> Response:
    refuse_invalid_unicode(body.model_extra or {})
    record = registry.submit(body.input, route="runsync", tenant=tenant_of(request))

    async def cancel() -> None:  # the client hung up before learning the job's id: nobody can fetch it
        registry.cancel(record)

    try:
        await while_connected(request, asyncio.wait_for(
            asyncio.shield(record.done.wait()), settings.server.runsync_wait_s), cancel)
    except asyncio.TimeoutError:
        pass
    return json_response(record.status_json())


@router.get("/status/{job_id}", summary="A job's status, and its output once done")
async def status(endpoint_id: str, job_id: str, request: Request, registry: Registry) -> Response:
    return json_response(_record(registry, request, job_id).status_json())


@router.get("/stream/{job_id}", summary="Chunks produced since the last poll")
async def stream(endpoint_id: str, job_id: str, request: Request, registry: Registry) -> Response:
    record = _record(registry, request, job_id)
    if record.status not in FINAL and record.streamed == len(record.chunks):
        # Hold the poll briefly for the next chunk rather than answering empty at once.
        try:
            await asyncio.wait_for(_next_chunk(record), timeout=2.0)
        except asyncio.TimeoutError:
            pass
    return json_response(record.stream_json())


async def _next_chunk(record: JobRecord) -> None:
    while record.streamed == len(record.chunks) and record.status not in FINAL:
        await asyncio.sleep(0.05)


@router.post("/cancel/{job_id}", summary="Cancel a job; a running generation stops")
async def cancel(endpoint_id: str, job_id: str, request: Request, registry: Registry) -> dict[str, Any]:
    record = _record(registry, request, job_id)
    registry.cancel(record)
    return {"id": record.id, "status": record.status}


@router.post("/purge-queue", summary="Cancel every job of yours still waiting")
async def purge_queue(endpoint_id: str, request: Request, registry: Registry) -> dict[str, Any]:
    queued = [r for r in registry.of_tenant(tenant_of(request)) if r.status == "IN_QUEUE"]
    for record in queued:
        registry.cancel(record)
    return {"removed": len(queued), "status": "completed"}


@router.get("/health", summary="Your jobs' counts, and the server's workers")
async def health(endpoint_id: str, request: Request, registry: Registry, limiter: Limiter) -> dict[str, Any]:
    running = limiter.running
    return {
        "jobs": registry.counts(tenant_of(request)),
        "workers": {"idle": max(0, limiter.max_concurrent_jobs - running), "running": running,
                    "initializing": 0, "ready": limiter.max_concurrent_jobs, "throttled": 0, "unhealthy": 0},
    }
