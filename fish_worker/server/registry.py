"""Jobs of the RunPod-style door (/v2): queued, run in the background, polled, streamed, cancelled.

As on this worker's RunPod queue endpoints (fish_worker/jobs/runpod_adapter.py), a finished job's
`output` is its result object, or for a streamed job a summary; `stream` hands out each chunk once.

Each job belongs to the tenant that submitted it: to any other tenant it does not exist (lookups
answer None, so the door answers 404 and ids never leak). Finished jobs are kept for `ttl_s`, and
at most `max_jobs` of them holding at most `max_bytes` of results. Past a limit, results go from the
tenant holding the most of what is over (jobs or bytes), its oldest first: a tenant that floods the
server pushes out its own results, never a quieter tenant's.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fish_worker.errors import ErrorKind, JobFailure
from fish_worker.jobs.outputs import final_output
from fish_worker.jobs.job import Job, ResultRoute
from fish_worker.server.limiter import Admission, JobLimiter, new_job_id

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
# How long a /v2/stream poll is held for the next chunk before it answers with none.
STREAM_HOLD_S = 2.0


@dataclass
class JobRecord:
    id: str
    tenant: str | None = None
    status: str = "IN_QUEUE"
    chunks: list[Any] = field(default_factory=list)
    error: str | None = None
    error_kind: ErrorKind | None = None  # what kind of failure `error` is
    streamed: int = 0  # chunks already handed out by /stream
    stream: bool = False  # the job asked for `stream: true`: its output is a summary of the chunks
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result_bytes: int = 0  # about the JSON size of `chunks`

    def status_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started_at is not None:
            out["delayTime"] = round((self.started_at - self.submitted_at) * 1000)
        if self.finished_at is not None and self.started_at is not None:
            out["executionTime"] = round((self.finished_at - self.started_at) * 1000)
        if self.status == "COMPLETED":
            out["output"] = final_output(self.chunks, self.stream)
        if self.error is not None:
            out["error"] = self.error
        return out

    def stream_json(self) -> dict[str, Any]:
        new, self.streamed = self.chunks[self.streamed :], len(self.chunks)
        out = {"status": self.status, "stream": [{"output": chunk} for chunk in new]}
        if self.error is not None:
            out["error"] = self.error
        return out


class JobRegistry:
    def __init__(self, runner: JobLimiter, ttl_s: float, max_jobs: int = 1000, max_bytes: int = 512 << 20) -> None:
        self.runner = runner
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.jobs: dict[str, JobRecord] = {}
        self._finished: dict[str, JobRecord] = {}  # in the order they finished: the oldest first
        self.stored_bytes = 0

    def submit(self, job_input: Any, route: ResultRoute, tenant: str | None = None) -> JobRecord:
        """Queue a job of `tenant`; ApiError 429 when the server or the tenant has too many already."""
        self._forget_old()
        admission = self.runner.admit(tenant)
        job = Job(id=new_job_id(), input=job_input, tenant=tenant, result_route=route)
        record = JobRecord(id=job.id, tenant=tenant, stream=job.streamed)
        self.jobs[record.id] = record
        record.task = asyncio.create_task(self._run(record, job, admission), name=f"job-{record.id}")
        # Also when the task is cancelled before it ever ran (and so never entered the runner).
        record.task.add_done_callback(lambda _: admission.release())
        return record

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        """The job, if it exists and is `tenant`'s."""
        record = self.jobs.get(job_id)
        return record if record is not None and record.tenant == tenant else None

    def of_tenant(self, tenant: str | None) -> list[JobRecord]:
        return [r for r in self.jobs.values() if r.tenant == tenant]

    def cancel(self, record: JobRecord) -> None:
        if record.status in FINAL:
            return
        # Cancelling the task closes the runner's generator, whose thread then stops generating.
        if record.task is not None:
            record.task.cancel()
        self._finish(record, "CANCELLED")

    def counts(self, tenant: str | None = None) -> dict[str, int]:
        statuses = [r.status for r in self.of_tenant(tenant)]
        return {
            "completed": statuses.count("COMPLETED"),
            "failed": statuses.count("FAILED") + statuses.count("CANCELLED"),
            "inProgress": statuses.count("IN_PROGRESS"),
            "inQueue": statuses.count("IN_QUEUE"),
            "retried": 0,
        }

    async def _run(self, record: JobRecord, job: Job, admission: Admission) -> None:
        chunks = self.runner.run(job, admission, on_start=lambda: self._start(record))
        try:
            async for chunk in chunks:
                if isinstance(chunk, JobFailure):
                    record.error, record.error_kind = chunk.message, chunk.kind
                    self._finish(record, "FAILED")
                    return
                record.chunks.append(chunk)
                record.result_bytes += approx_json_bytes(chunk)
            self._finish(record, "COMPLETED")
        except asyncio.CancelledError:
            self._finish(record, "CANCELLED")
            raise
        except Exception as exc:  # the runner reports its own errors; this is a bug of ours
            record.error, record.error_kind = f"internal error: {type(exc).__name__}: {exc}", ErrorKind.INTERNAL
            self._finish(record, "FAILED")
        finally:
            await chunks.aclose()

    def _start(self, record: JobRecord) -> None:
        record.status = "IN_PROGRESS"
        record.started_at = time.monotonic()

    def _finish(self, record: JobRecord, status: str) -> None:
        if record.status in FINAL:
            return
        record.status = status
        record.finished_at = time.monotonic()
        record.done.set()
        self._finished[record.id] = record
        self.stored_bytes += record.result_bytes
        self._forget_over_limits()

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        while self._finished:
            oldest = next(iter(self._finished.values()))
            assert oldest.finished_at is not None  # _finish sets it before filing the record here
            if oldest.finished_at >= cutoff:
                break
            self._forget(oldest)

    def _forget_over_limits(self) -> None:
        # Finished jobs only: queued and running ones are bounded by the queue limits (JobLimiter), and
        # counting them here would let one tenant's burst in flight push out another's stored result.
        while self._finished and (len(self._finished) > self.max_jobs or self.stored_bytes > self.max_bytes):
            over_jobs = len(self._finished) > self.max_jobs
            held: Counter = Counter()
            for record in self._finished.values():
                held[record.tenant] += 1 if over_jobs else record.result_bytes
            heaviest = max(held, key=held.__getitem__)  # ties: the first to finish, as Counter keeps order
            self._forget(next(r for r in self._finished.values() if r.tenant == heaviest))

    def _forget(self, record: JobRecord) -> None:
        del self._finished[record.id]
        self.jobs.pop(record.id, None)
        self.stored_bytes -= record.result_bytes


def approx_json_bytes(obj: Any) -> int:
    """About how many bytes `obj` takes as JSON, without serialising it (audio is large)."""
    if isinstance(obj, str):
        return len(obj) + 2
    if isinstance(obj, dict):
        return 2 + sum(len(str(k)) + 4 + approx_json_bytes(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], float):  # "float" audio: up to ~25 bytes a sample
            return 2 + 25 * len(obj)
        return 2 + sum(approx_json_bytes(v) + 2 for v in obj)
    return 24
