"""How our jobs map onto RunPod's job queue, through runpod 1.12.0's own worker loop.

The SDK picks one way of reporting per *handler*: a generator's yields all go to job-stream and
(with return_aggregate_stream) again, as one list, to job-done; a plain handler's return value is
one job-done. Our API needs the choice per *job*:

    no `stream`      one job-done POST whose `output` is the whole result object (no job-stream POST)
    `stream: true`   one job-stream POST per chunk (each <= 1 MB), then a small job-done summary
                     ({text, duration_s, chunks, seed}); the audio is never sent twice

So this module replaces the SDK's per-job function (`rp_scale.handle_job`, which `JobScaler` takes
as its `jobs_handler`) with `QueueJobHandler`, built from the SDK's own pieces: `run_job` for whole
results, `run_job_generator` + `stream_result` for chunks, `send_result` for the end. It is the
RunPod door: the platform's job dict becomes a typed `Job` here (`Job.from_runpod`), once per job.
tests/test_runpod_adapter.py fails when those internals change under it (runpod is pinned).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.rp_http import send_result, stream_result
from runpod.serverless.modules.rp_job import run_job, run_job_generator

from fish_worker.audio.formats import RESULT_LIMIT_BYTES, STREAM_CHUNK_LIMIT_BYTES
from fish_worker.errors import JobFailure
from fish_worker.jobs.job import Job
from fish_worker.jobs.outputs import StreamSummary

RUNPOD_VERSION = "1.12.0"

PostStream = Callable[[dict[str, Any]], Awaitable[None]]
PostDone = Callable[[dict[str, Any], bool], Awaitable[None]]


def body_bytes(body: dict[str, Any]) -> int:
    """Size of a POST body exactly as the SDK serializes it (rp_http._handle_result)."""
    return len(json.dumps(body, ensure_ascii=False).encode("utf-8"))


@dataclass(frozen=True)
class QueueJobHandler:
    """One job, reported to the queue the way our API promises (see the module docstring)."""

    whole: Callable[[Job], Awaitable[dict[str, Any]]]  # the one result (JobRunner.result)
    stream: Callable[[Job], AsyncGenerator[dict[str, Any] | JobFailure, None]]  # the chunks (JobRunner.stream)
    summary: Callable[[], StreamSummary] = StreamSummary
    # A queue job cannot tell /run from /runsync, so a whole result must fit the smaller limit.
    result_limit_bytes: int = RESULT_LIMIT_BYTES["run"]

    async def __call__(self, session: Any, config: dict[str, Any], job: dict[str, Any]) -> None:
        """rp_scale's jobs_handler signature: POST to the SDK's job-stream/job-done URLs."""

        async def post_stream(body: dict[str, Any]) -> None:
            await stream_result(session, body, job)

        async def post_done(body: dict[str, Any], is_stream: bool) -> None:
            if config.get("refresh_worker", False):
                body["stopPod"] = True
            await send_result(session, body, job, is_stream=is_stream)

        await self.process(job, post_stream, post_done)

    async def result(self, job: dict[str, Any]) -> dict[str, Any]:
        """The whole result of the platform's `job`: what the SDK's own modes (--rp_serve_api) call."""
        return await self.whole(Job.from_runpod(job))

    async def process(self, job: dict[str, Any], post_stream: PostStream, post_done: PostDone) -> None:
        typed = Job.from_runpod(job)

        async def whole(_: dict[str, Any]) -> dict[str, Any]:
            return await self.whole(typed)

        async def chunks(
            _: dict[str, Any],
        ) -> AsyncGenerator[dict[str, Any], None]:  # the SDK wants a generator function
            async with aclosing(runpod_chunks(self.stream(typed))) as shaped:
                async for chunk in shaped:
                    yield chunk

        if not typed.streamed:
            done = await run_job(whole, job)  # the SDK's own: {"output": ...} or {"error": ...}
            await post_done(self._bounded(done), False)
            return
        summary = self.summary()
        result: dict[str, Any] | None = None
        async for partial in run_job_generator(chunks, job):
            error = partial.get("error") or _output_error(partial.get("output"))
            if error:  # as the SDK does: an error chunk ends the job and is never streamed
                result = {"error": str(error)}
                break
            body = {"output": partial["output"]}
            if body_bytes(body) > STREAM_CHUNK_LIMIT_BYTES:  # never happens: StreamedOutput splits
                result = {"error": f"internal error: a stream chunk is {body_bytes(body)} bytes, over 1 MB"}
                break
            await post_stream(body)
            summary.add(partial["output"])
        await post_done(result or {"output": summary.output()}, True)

    def _bounded(self, result: dict[str, Any]) -> dict[str, Any]:
        # within_result_limit keeps results under the limit; this guards against a platform rejection.
        size = body_bytes(result)
        if size <= self.result_limit_bytes:
            return result
        return {
            "error": f"internal error: result is {size / 1e6:.1f} MB, over RunPod's "
            f"{self.result_limit_bytes / 1e6:.0f} MB limit"
        }


def _output_error(output: Any) -> Any:
    return output.get("error") if isinstance(output, dict) else None


async def runpod_chunks(
    events: AsyncGenerator[dict[str, Any] | JobFailure, None],
) -> AsyncGenerator[dict[str, Any], None]:
    """RunPod's shape of a job's stream: a failure becomes an {"error": message} chunk, which ends the job."""
    async with aclosing(events):
        async for event in events:
            yield {"error": event.message} if isinstance(event, JobFailure) else event


def install(handler: QueueJobHandler) -> None:
    """Make runpod's JobScaler run every job through `handler` (call before runpod.serverless.start)."""
    rp_scale.handle_job = handler


async def run_local(
    handler: QueueJobHandler, job: dict[str, Any], on_stream: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """What the platform would store for `job`: the job-done body, plus `stream` for streamed jobs.

    `stream` is what GET /stream/{id} hands out over the job's life: the job-stream bodies, in order.
    `on_stream` sees each of them as it is posted (the quick start times the first audio with it).
    """
    streamed: list[dict[str, Any]] = []
    done: dict[str, Any] = {}

    async def post_stream(body: dict[str, Any]) -> None:
        streamed.append(body)
        if on_stream is not None:
            on_stream(body)

    async def post_done(body: dict[str, Any], is_stream: bool) -> None:
        done.update(body)

    job.setdefault("id", "local_test")
    await handler.process(job, post_stream, post_done)
    return {**done, "stream": streamed} if Job.from_runpod(job).streamed else done
