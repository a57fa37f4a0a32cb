"""All doors run jobs through the one JobRunner, at most N at a time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fish_worker.jobs import JobRunner


def new_job_id() -> str:
    return str(uuid.uuid4())


class GatedRunner:
    def __init__(self, runner: JobRunner, max_concurrent_jobs: int) -> None:
        self.runner = runner
        self.max_concurrent_jobs = max_concurrent_jobs
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self.running = 0

    async def run(self, job: dict[str, Any], on_start: Callable[[], None] | None = None,
                  ) -> AsyncIterator[dict[str, Any]]:
        """The runner's chunks for `job`, once a slot is free (then `on_start()`). Closing this stops the job."""
        async with self._slots:
            self.running += 1
            if on_start is not None:
                on_start()
            try:
                async for chunk in self.runner.run(job):
                    yield chunk
            finally:
                self.running -= 1

    @property
    def service(self):
        return self.runner.service
