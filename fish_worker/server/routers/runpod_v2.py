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
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import ApiError, refuse_invalid_unicode
from fish_worker.server.json_body import json_response
from fish_worker.server.v2_jobs import V2Jobs

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["RunPod API"], dependencies=[Depends(require_api_key)])


class RunPodRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # webhook, policy, s3Config: accepted, not acted on

    input: Any = Field(description="The job input, as the worker takes it.")


def _jobs(request: Request) -> V2Jobs:
    return request.app.state.v2_jobs


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no job with id {job_id[:100]!r} (results are kept for FISH_JOB_TTL_S seconds)",
                    job_id=job_id[:100])


def _found(answer: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    if answer is None:
        raise _not_found(job_id)
    return answer


@router.post("/run", summary="Queue a job")
async def run(endpoint_id: str, body: RunPodRequest, request: Request) -> dict[str, Any]:
    refuse_invalid_unicode(body.model_extra or {})  # the input itself is checked with the job's fields
    return await _jobs(request).submit(body.input, route="run", tenant=tenant_of(request))


@router.post("/runsync", summary="Run a job and wait for it (IN_PROGRESS after FISH_RUNSYNC_WAIT_S)")
async def runsync(endpoint_id: str, body: RunPodRequest, request: Request) -> Response:
    refuse_invalid_unicode(body.model_extra or {})
    jobs, tenant = _jobs(request), tenant_of(request)
    submitted = await jobs.submit(body.input, route="runsync", tenant=tenant)

    async def cancel() -> None:  # the client hung up before learning the job's id: nobody can fetch it
        await jobs.cancel(submitted["id"], tenant)

    answer = await while_connected(
        request, jobs.wait(submitted["id"], tenant, request.app.state.settings.server.runsync_wait_s), cancel)
    return json_response(_found(answer, submitted["id"]))


@router.get("/status/{job_id}", summary="A job's status, and its output once done")
async def status(endpoint_id: str, job_id: str, request: Request) -> Response:
    return json_response(_found(await _jobs(request).status(job_id, tenant_of(request)), job_id))


@router.get("/stream/{job_id}", summary="Chunks produced since the last poll")
async def stream(endpoint_id: str, job_id: str, request: Request) -> Response:
    # Held briefly for the next chunk rather than answering empty at once.
    return json_response(_found(await _jobs(request).stream(job_id, tenant_of(request)), job_id))


@router.post("/cancel/{job_id}", summary="Cancel a job; a running generation stops")
async def cancel(endpoint_id: str, job_id: str, request: Request) -> dict[str, Any]:
    return _found(await _jobs(request).cancel(job_id, tenant_of(request)), job_id)


@router.post("/purge-queue", summary="Cancel every job of yours still waiting")
async def purge_queue(endpoint_id: str, request: Request) -> dict[str, Any]:
    return {"removed": await _jobs(request).purge_queue(tenant_of(request)), "status": "completed"}


@router.get("/health", summary="Your jobs' counts, and the server's workers")
async def health(endpoint_id: str, request: Request) -> dict[str, Any]:
    runner = request.app.state.runner
    running = runner.running
    return {
        "jobs": await _jobs(request).counts(tenant_of(request)),
        "workers": {"idle": max(0, runner.max_concurrent_jobs - running), "running": running,
                    "initializing": 0, "ready": runner.max_concurrent_jobs, "throttled": 0, "unhealthy": 0},
    }
