"""Jobs of the RunPod-style door (/v2): queued, run in the background, polled, streamed, cancelled.

As on this worker's RunPod queue endpoints (fish_worker/runpod_adapter.py), a finished job's
`output` is its result object, or for a streamed job a summary; `stream` hands out each chunk once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from fish_worker.job_output import final_output
from fish_worker.jobs import RESULT_ROUTE_KEY
from fish_worker.server.gate import GatedRunner, new_job_id

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class JobRecord:
    id: str
    status: str = "IN_QUEUE"
    chunks: list[Any] = field(default_factory=list)
    error: str | None = None
    streamed: int = 0  # chunks already handed out by /stream
    stream: bool = False  # the job asked for `stream: true`: its output is a summary of the chunks
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

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
        new, self.streamed = self.chunks[self.streamed:], len(self.chunks)
        out = {"status": self.status, "stream": [{"output": chunk} for chunk in new]}
        if self.error is not None:
            out["error"] = self.error
        return out


class JobRegistry:
    def __init__(self, runner: GatedRunner, ttl_s: float) -> None:
        self.runner = runner
        self.ttl_s = ttl_s
        self.jobs: dict[str, JobRecord] = {}

    def submit(self, job_input: Any, route: str) -> JobRecord:
        self._forget_old()
        record = JobRecord(id=new_job_id(), stream=isinstance(job_input, dict) and job_input.get("stream") is True)
        self.jobs[record.id] = record
        job = {"id": record.id, "input": job_input, RESULT_ROUTE_KEY: route}
        record.task = asyncio.create_task(self._run(record, job), name=f"job-{record.id}")
        return record

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def cancel(self, record: JobRecord) -> None:
        if record.status in FINAL:
            return
        # Cancelling the task closes the runner's generator, whose thread then stops generating.
        record.task.cancel()
        self._finish(record, "CANCELLED")

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.jobs.values()]
        return {
            "completed": statuses.count("COMPLETED"),
            "failed": statuses.count("FAILED") + statuses.count("CANCELLED"),
            "inProgress": statuses.count("IN_PROGRESS"),
            "inQueue": statuses.count("IN_QUEUE"),
            "retried": 0,
        }

    async def _run(self, record: JobRecord, job: dict[str, Any]) -> None:
        chunks = self.runner.run(job, on_start=lambda: self._start(record))
        try:
            async for chunk in chunks:
                if isinstance(chunk, dict) and "error" in chunk:
                    record.error = str(chunk["error"])
                    self._finish(record, "FAILED")
                    return
                record.chunks.append(chunk)
            self._finish(record, "COMPLETED")
        except asyncio.CancelledError:
            self._finish(record, "CANCELLED")
            raise
        except Exception as exc:  # the runner reports its own errors; this is a bug of ours
            record.error = f"internal error: {type(exc).__name__}: {exc}"
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

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        for job_id in [i for i, r in self.jobs.items() if r.finished_at is not None and r.finished_at < cutoff]:
            del self.jobs[job_id]
