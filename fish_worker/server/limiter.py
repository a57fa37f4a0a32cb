"""Every door's work is admitted here: at most N generating, at most M admitted.

Job routes (seed /run, /v2) run their jobs through the one JobRunner (`run`); the speech
routes (OpenAI, Fish) call the TTS service in a slot of their own (`speech`).

A job is admitted (generating or waiting for a slot) only while the server has fewer than
`max_queued_jobs` and its tenant fewer than `max_queued_per_tenant`; otherwise the caller gets 429
with Retry-After at once, instead of a queue that grows without bound.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, nullcontext
from typing import Any, Protocol, TypeVar

from fish_worker.async_bridge import iterate_in_thread
from fish_worker.errors import ErrorKind, JobFailure
from fish_worker.jobs.job import Job
from fish_worker.jobs.runner import JobRunner, needs_generation_slot
from fish_worker.server.errors import ApiError, status_of

T = TypeVar("T")


def new_job_id() -> str:
    return str(uuid.uuid4())


class Place(Protocol):
    """What a running job holds until it ends: an Admission here, or a place kept elsewhere (Redis)."""

    def release(self) -> None: ...


class Admission:
    """One admitted job's place; `release()` (idempotent) frees it."""

    def __init__(self, limiter: JobLimiter, tenant: str | None) -> None:
        self._limiter = limiter
        self.tenant = tenant
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._release(self.tenant)


class JobLimiter:
    def __init__(
        self,
        runner: JobRunner,
        max_concurrent_jobs: int,
        max_queued_jobs: int | None = None,
        max_queued_per_tenant: int | None = None,
        retry_after_s: int = 5,
    ) -> None:
        self.runner = runner
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_queued_jobs = max_queued_jobs or 1_000_000
        self.max_queued_per_tenant = max_queued_per_tenant or self.max_queued_jobs
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self.running = 0
        self.admitted = 0
        self._per_tenant: Counter[str | None] = Counter()

    def admit(self, tenant: str | None) -> Admission:
        """A place for one more job of `tenant`, or ApiError 429 when the server or the tenant is full."""
        if self.admitted >= self.max_queued_jobs:
            raise self._busy(f"server busy: {self.admitted} jobs running or queued (FISH_MAX_QUEUED_JOBS)")
        if self._per_tenant[tenant] >= self.max_queued_per_tenant:
            raise self._busy(
                f"too many jobs of yours running or queued: {self._per_tenant[tenant]} "
                "(FISH_MAX_QUEUED_JOBS_PER_TENANT)"
            )
        self.admitted += 1
        self._per_tenant[tenant] += 1
        return Admission(self, tenant)

    async def run(
        self, job: Job, admission: Place | None = None, on_start: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any] | JobFailure, None]:
        """The runner's events for `job` (chunks, then a JobFailure if it fails), once a slot is free
        (then `on_start()`); an action that runs no model (list_voices, delete_voice, end_conversation)
        needs no slot and starts at once. Closing this stops the job.

        Without `admission`, the job is admitted when iteration starts (ApiError 429 from the first chunk).
        The admission is released when the job ends.
        """
        admission = admission or self.admit(job.tenant)
        try:
            async with self.slot() if needs_generation_slot(job.input) else nullcontext():
                if on_start is not None:
                    on_start()
                async with aclosing(self.runner.stream(job)) as events:
                    async for event in events:
                        yield event
        finally:
            admission.release()

    async def speech(
        self,
        admission: Admission,
        make: Callable[[threading.Event], Iterator[T]],
    ) -> AsyncGenerator[T, None]:
        """`make(stop)`'s items (generated on a thread) once a generation slot is free; the admission
        is given back when it ends. Closing this stops the generation."""
        try:
            async with self.slot(), aclosing(iterate_in_thread(make)) as items:
                async for item in items:
                    yield item
        finally:
            admission.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `max_concurrent_jobs` generation slots, waited for, held for the block."""
        async with self._slots:
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1

    def _release(self, tenant: str | None) -> None:
        self.admitted -= 1
        self._per_tenant[tenant] -= 1
        if self._per_tenant[tenant] <= 0:
            del self._per_tenant[tenant]

    def _busy(self, message: str) -> ApiError:
        return ApiError(
            status_of(ErrorKind.BUSY),
            f"{message}; retry in {self.retry_after_s} s",
            headers={"Retry-After": str(self.retry_after_s)},
        )
