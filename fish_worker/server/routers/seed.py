"""The seed API's contract (../shared/seed-api.md): POST /run, answered in place.

Plain: `{"id", "status": "success", "output": {...}}`. With `input.stream: true`: a streamed body
of such objects, one JSON object per line (NDJSON), each parseable on its own; or, when the client
sends `Accept: text/event-stream`, the same objects as Server-Sent Events (`data: {...}`). Errors:
`{"id", "status": "error", "error"}` with the status of the error's kind (server/errors.py): 400 (bad
input), 401 (bad key), 404 (an unknown saved voice), 429 (busy), 500 (our fault).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fish_worker.errors import JobFailure
from fish_worker.jobs.job import Job
from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.dependencies import Limiter
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import refuse_invalid_unicode, status_of
from fish_worker.server.json_body import dumps, json_response
from fish_worker.server.limiter import new_job_id

router = APIRouter(tags=["seed API"], dependencies=[Depends(require_api_key)])


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # RunPod-style extras (webhook, policy) are accepted and ignored

    input: dict[str, Any] = Field(description="The job input: message, stream, audio_format, voice_id, ...")


def error_response(job_id: str | None, status: int, message: str) -> JSONResponse:
    return JSONResponse({"id": job_id, "status": "error", "error": message}, status_code=status)


def failure_response(job_id: str, failure: JobFailure) -> JSONResponse:
    return error_response(job_id, status_of(failure.kind), failure.message)


@router.post("/run", summary="Run a job and answer with its output (or stream its chunks)")
async def run(body: RunRequest, request: Request, limiter: Limiter):
    refuse_invalid_unicode(body.model_extra or {})  # the input itself is checked with the job's fields
    job_id = new_job_id()
    tenant = tenant_of(request)
    admission = limiter.admit(tenant)  # 429 when the server or this tenant has too many jobs
    # No RunPod result limit here: this server answers directly, whatever the size.
    job = Job(id=job_id, input=body.input, tenant=tenant, result_route=None)
    chunks = limiter.run(job, admission)
    # Until the answer starts, nothing else notices the client hanging up: that stops the job here.
    first = await while_connected(request, anext(chunks, None), chunks.aclose)
    if first is None:
        return error_response(job_id, 500, "internal error: the job produced no output")
    if isinstance(first, JobFailure):
        await chunks.aclose()
        return failure_response(job_id, first)
    if job.streamed:
        if wants_event_stream(request):  # the same objects as Server-Sent Events, one per `data:` line
            return StreamingResponse(
                _encoded(_objects(job_id, first, chunks), _sse_event),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return StreamingResponse(_encoded(_objects(job_id, first, chunks), _line), media_type="application/x-ndjson")
    # A plain job has one chunk; drain to let the runner finish.
    rest = await while_connected(request, _drained(chunks), chunks.aclose)
    failures = [c for c in rest if isinstance(c, JobFailure)]
    if failures:
        return failure_response(job_id, failures[0])
    return json_response({"id": job_id, "status": "success", "output": first})


async def _drained(chunks: AsyncIterator[dict[str, Any] | JobFailure]) -> list[dict[str, Any] | JobFailure]:
    return [chunk async for chunk in chunks]


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def _objects(
    job_id: str,
    first: dict[str, Any],
    chunks: AsyncIterator[dict[str, Any] | JobFailure],
) -> AsyncIterator[dict[str, Any]]:
    yield {"id": job_id, "status": "success", "output": first}
    async for chunk in chunks:
        if isinstance(chunk, JobFailure):  # the status line has gone out already: the error is the last object
            yield {"id": job_id, "status": "error", "error": chunk.message}
            return
        yield {"id": job_id, "status": "success", "output": chunk}


async def _encoded(
    objects: AsyncIterator[dict[str, Any]],
    encode: Callable[[dict[str, Any]], bytes],
) -> AsyncIterator[bytes]:
    async for obj in objects:
        yield encode(obj)


def _line(obj: dict[str, Any]) -> bytes:
    return dumps(obj) + b"\n"


def _sse_event(obj: dict[str, Any]) -> bytes:
    return b"data: " + _line(obj) + b"\n"  # compact JSON has no newline: one data line per event
