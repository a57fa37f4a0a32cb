"""RunPod's hosted API under /v2/{endpoint_id}/, so `runpod.Endpoint` works with its base URL here.

The endpoint id in the path is accepted whatever it is: this server is one endpoint. Each caller
sees only its own tenant's jobs: another tenant's job id answers 404, like an id that never existed.
Where the jobs live (this process, or Redis shared by every replica) is server/v2_jobs.py's choice.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.dependencies import AppSettings, Limiter, V2JobStore
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import ApiError, refuse_invalid_unicode
from fish_worker.server.json_body import json_response

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["RunPod API"], dependencies=[Depends(require_api_key)])


class RunPodRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # webhook, policy, s3Config: accepted, not acted on

    input: Any = Field(description="The job input, as the worker takes it.")


def _not_found(job_id: str) -> ApiError:
    return ApiError(
        404, f"no job with id {job_id[:100]!r} (results are kept for FISH_JOB_TTL_S seconds)", job_id=job_id[:100]
    )


def _found(answer: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    if answer is None:
        raise _not_found(job_id)
    return answer


@router.post("/run", summary="Queue a job")
async def run(endpoint_id: str, body: RunPodRequest, request: Request, jobs: V2JobStore) -> dict[str, Any]:
    refuse_invalid_unicode(body.model_extra or {})  # the input itself is checked with the job's fields
    return await jobs.submit(body.input, route="run", tenant=tenant_of(request))


@router.post("/runsync", summary="Run a job and wait for it (IN_PROGRESS after FISH_RUNSYNC_WAIT_S)")
async def runsync(
    endpoint_id: str, body: RunPodRequest, request: Request, jobs: V2JobStore, settings: AppSettings
) -> Response:
    refuse_invalid_unicode(body.model_extra or {})
    tenant = tenant_of(request)
    submitted = await jobs.submit(body.input, route="runsync", tenant=tenant)

    async def cancel() -> None:  # the client hung up before learning the job's id: nobody can fetch it
        await jobs.cancel(submitted["id"], tenant)

    answer = await while_connected(request, jobs.wait(submitted["id"], tenant, settings.server.runsync_wait_s), cancel)
    return json_response(_found(answer, submitted["id"]))


@router.get("/status/{job_id}", summary="A job's status, and its output once done")
async def status(endpoint_id: str, job_id: str, request: Request, jobs: V2JobStore) -> Response:
    return json_response(_found(await jobs.status(job_id, tenant_of(request)), job_id))


@router.get("/stream/{job_id}", summary="Chunks produced since the last poll")
async def stream(endpoint_id: str, job_id: str, request: Request, jobs: V2JobStore) -> Response:
    # Held briefly for the next chunk rather than answering empty at once.
    return json_response(_found(await jobs.stream(job_id, tenant_of(request)), job_id))


@router.post("/cancel/{job_id}", summary="Cancel a job; a running generation stops")
async def cancel(endpoint_id: str, job_id: str, request: Request, jobs: V2JobStore) -> dict[str, Any]:
    return _found(await jobs.cancel(job_id, tenant_of(request)), job_id)


@router.post("/purge-queue", summary="Cancel every job of yours still waiting")
async def purge_queue(endpoint_id: str, request: Request, jobs: V2JobStore) -> dict[str, Any]:
    return {"removed": await jobs.purge_queue(tenant_of(request)), "status": "completed"}


@router.get("/health", summary="Your jobs' counts, and the server's workers")
async def health(endpoint_id: str, request: Request, jobs: V2JobStore, limiter: Limiter) -> dict[str, Any]:
    # With REDIS_URL, every live replica's slots (each publishes its own); else this process's.
    ready, running = await jobs.worker_slots() or (limiter.max_concurrent_jobs, limiter.running)
    return {
        "jobs": await jobs.counts(tenant_of(request)),
        "workers": {
            "idle": max(0, ready - running),
            "running": running,
            "initializing": 0,
            "ready": ready,
            "throttled": 0,
            "unhealthy": 0,
        },
    }
