"""What the /v2 door asks of its jobs, and the one place that picks where they live.

`V2Jobs` is the door's view: submit, status, stream, cancel, wait, purge, counts, each by job id and
tenant (another tenant's job answers None, as one that never existed). Two implementations:

- `LocalV2Jobs`: the jobs in this process's memory (server/registry.py), run by this process: as before
  REDIS_URL existed, and still without it.
- `RedisV2Jobs` (server/redis_jobs.py): with REDIS_URL, jobs, results and streamed chunks live in Redis,
  queued jobs are taken by whichever replica has room, so any replica answers for any job.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fish_worker.jobs.job import ResultRoute
from fish_worker.server.limiter import JobLimiter
from fish_worker.server.registry import FINAL, STREAM_HOLD_S, JobRegistry
from fish_worker.settings import Settings


class V2Jobs(Protocol):
    async def submit(self, job_input: Any, route: ResultRoute, tenant: str | None) -> dict[str, Any]:
        """Queue a job; `{"id", "status"}`. ApiError 429 when the service or the tenant has too many."""

    async def status(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """RunPod's status object (output once COMPLETED, error once FAILED); None: no such job of `tenant`."""

    async def wait(self, job_id: str, tenant: str | None, timeout_s: float) -> dict[str, Any] | None:
        """The status once the job has ended, or after `timeout_s` whatever it is."""

    async def stream(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """The chunks not handed out yet (each chunk once, whichever replica is asked), held up to
        STREAM_HOLD_S for a first one."""

    async def cancel(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        """Cancel the job (a running generation stops, wherever it runs); `{"id", "status"}`."""

    async def purge_queue(self, tenant: str | None) -> int:
        """Cancel every job of `tenant` still waiting; how many."""

    async def counts(self, tenant: str | None) -> dict[str, int]:
        """RunPod's health `jobs` object for `tenant`."""

    async def worker_slots(self) -> tuple[int, int] | None:
        """(generation slots, slots in use) of every replica together; None: this process is the service."""

    async def start(self) -> None:
        """Begin the background work (taking queued jobs, heartbeats), on the serving event loop."""

    async def close(self) -> None:
        """Stop the background work."""


class LocalV2Jobs:
    """The jobs of this process alone (JobRegistry), run as asyncio tasks of this process."""

    def __init__(self, registry: JobRegistry) -> None:
        self.registry = registry

    async def submit(self, job_input: Any, route: ResultRoute, tenant: str | None) -> dict[str, Any]:
        record = self.registry.submit(job_input, route=route, tenant=tenant)
        return {"id": record.id, "status": record.status}

    async def status(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        record = self.registry.get(job_id, tenant)
        return None if record is None else record.status_json()

    async def wait(self, job_id: str, tenant: str | None, timeout_s: float) -> dict[str, Any] | None:
        record = self.registry.get(job_id, tenant)
        if record is None:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(record.done.wait()), timeout_s)
        except asyncio.TimeoutError:
            pass
        return record.status_json()  # the record itself: results over the caps may be forgotten by now

    async def stream(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        record = self.registry.get(job_id, tenant)
        if record is None:
            return None
        deadline = asyncio.get_running_loop().time() + STREAM_HOLD_S
        while (
            record.streamed == len(record.chunks)
            and record.status not in FINAL
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        return record.stream_json()

    async def cancel(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        record = self.registry.get(job_id, tenant)
        if record is None:
            return None
        self.registry.cancel(record)
        return {"id": record.id, "status": record.status}

    async def purge_queue(self, tenant: str | None) -> int:
        queued = [r for r in self.registry.of_tenant(tenant) if r.status == "IN_QUEUE"]
        for record in queued:
            self.registry.cancel(record)
        return len(queued)

    async def counts(self, tenant: str | None) -> dict[str, int]:
        return self.registry.counts(tenant)

    async def worker_slots(self) -> tuple[int, int] | None:
        return None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def make_v2_jobs(settings: Settings, limiter: JobLimiter, registry: JobRegistry) -> V2Jobs:
    """Redis-backed jobs shared by every replica when REDIS_URL is set, else this process's `registry`."""
    if settings.storage.redis_url:
        from fish_worker.server.redis_jobs import RedisV2Jobs  # redis.asyncio only when it is used

        server = settings.server
        return RedisV2Jobs(
            settings.storage.redis_url,
            limiter,
            ttl_s=server.job_ttl_s,
            max_jobs=server.max_stored_jobs,
            max_bytes=server.max_stored_result_bytes,
            max_queued=server.max_queued_jobs,
            max_queued_per_tenant=server.max_queued_jobs_per_tenant,
            lease_s=server.job_lease_s,
            retry_after_s=server.retry_after_s,
        )
    return LocalV2Jobs(registry)
