"""Job admission counted across replicas (REDIS_URL): FISH_MAX_QUEUED_JOBS[_PER_TENANT] for the whole service.

Every door's job (seed /run, OpenAI, Fish HTTP and live) is admitted by this replica's JobLimiter as on
one server, and then also takes a place in Redis: the sorted sets `active` and `active:t:<tenant>` that
the /v2 jobs in Redis use too (server/redis_jobs.py), so both kinds count against one cap. A place is
scored by when it expires, one lease (FISH_JOB_LEASE_S) ahead, renewed while its job lives; a replica
that dies stops renewing, and its places drop out of the count within a lease. Admission is one Lua
script (drop the expired places, count, add), so two replicas can never both take the last place.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis

from fish_worker.errors import ErrorKind
from fish_worker.jobs.runner import JobRunner
from fish_worker.server.errors import ApiError, status_of
from fish_worker.server.limiter import Admission, JobLimiter
from fish_worker.server.redis_jobs import KEY_PREFIX
from fish_worker.settings import Settings

log = logging.getLogger(__name__)

_ADMIT = """
local P, token, t, now, expires = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local all, mine = P .. 'active', P .. 'active:t:' .. t
redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
redis.call('ZREMRANGEBYSCORE', mine, '-inf', now)
local n_all, n_mine = redis.call('ZCARD', all), redis.call('ZCARD', mine)
if n_all >= tonumber(ARGV[6]) then return {1, n_all} end
if n_mine >= tonumber(ARGV[7]) then return {2, n_mine} end
redis.call('ZADD', all, expires, token)
redis.call('ZADD', mine, expires, token)
return {0, 0}
"""


class _SharedAdmission(Admission):
    def __init__(self, limiter: SharedJobLimiter, tenant: str | None, token: str) -> None:
        super().__init__(limiter, tenant)
        self._shared = limiter
        self.token = token

    def release(self) -> None:
        if self._held:
            self._shared._give_back(self.token)
        super().release()


class SharedJobLimiter(JobLimiter):
    def __init__(
        self,
        runner: JobRunner,
        max_concurrent_jobs: int,
        max_queued_jobs: int | None = None,
        max_queued_per_tenant: int | None = None,
        retry_after_s: int = 5,
        *,
        redis_url: str,
        lease_s: float,
        key_prefix: str = KEY_PREFIX,
    ) -> None:
        super().__init__(runner, max_concurrent_jobs, max_queued_jobs, max_queued_per_tenant, retry_after_s)
        self.lease_s = lease_s
        self.prefix = key_prefix
        # Admission runs on the event loop: short timeouts, so a Redis that stops answering costs a
        # request at most a second (it is then refused as unavailable), not the whole server's loop.
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._admit = self._redis.register_script(_ADMIT)
        self._held: dict[str, str] = {}  # token → tenant key, the places this replica holds
        self._renewing: asyncio.Task | None = None

    def admit(self, tenant: str | None) -> Admission:
        local = super().admit(tenant)  # this replica's own bound first: no Redis call for what it refuses
        local._held = False  # handed over to the shared admission below, which releases the count
        token, key = f"door-{uuid.uuid4()}", tenant or ""
        now = time.time()
        try:
            refused, count = self._admit(
                args=[
                    self.prefix,
                    token,
                    key,
                    now,
                    now + self.lease_s,
                    self.max_queued_jobs,
                    self.max_queued_per_tenant,
                ]
            )
        except redis.RedisError as exc:
            self._release(tenant)
            raise ApiError(
                status_of(ErrorKind.UNAVAILABLE), f"job store unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        if refused:
            self._release(tenant)
            raise self._busy(
                f"server busy: {count} jobs running or queued on all replicas (FISH_MAX_QUEUED_JOBS)"
                if refused == 1
                else f"too many jobs of yours running or queued: {count} (FISH_MAX_QUEUED_JOBS_PER_TENANT)"
            )
        self._held[token] = key
        return _SharedAdmission(self, tenant, token)

    async def start(self) -> None:
        self._renewing = asyncio.create_task(self._renew_loop(), name="admission-renewal")

    async def close(self) -> None:
        """The replica stops: its places are freed now rather than a lease later (1 s socket timeout)."""
        if self._renewing is not None:
            self._renewing.cancel()
        held, self._held = self._held, {}  # a job's later release() finds nothing to give back
        if held:
            try:
                await asyncio.to_thread(self._drop, held)
            except redis.RedisError as exc:  # they expire with their lease anyway
                log.warning("freeing this replica's job places in Redis failed: %s", exc)
        self._redis.close()

    def _drop(self, held: dict[str, str]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for token, key in held.items():
                pipe.zrem(self.prefix + "active", token)
                pipe.zrem(self.prefix + "active:t:" + key, token)
            pipe.execute()

    def _give_back(self, token: str) -> None:
        key = self._held.pop(token, None)
        if key is None:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.prefix + "active", token)
                pipe.zrem(self.prefix + "active:t:" + key, token)
                pipe.execute()
        except redis.RedisError as exc:  # the place expires with its lease anyway
            log.warning("giving back a job's place in Redis failed: %s", exc)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.lease_s / 3))
            if self._held:
                try:
                    await asyncio.to_thread(self._renew, dict(self._held))
                except redis.RedisError as exc:
                    log.warning("renewing job places in Redis failed: %s", exc)

    def _renew(self, held: dict[str, str]) -> None:
        expires = time.time() + self.lease_s
        with self._redis.pipeline(transaction=False) as pipe:
            for token, key in held.items():
                pipe.zadd(self.prefix + "active", {token: expires}, xx=True)
                pipe.zadd(self.prefix + "active:t:" + key, {token: expires}, xx=True)
            pipe.execute()


def make_job_limiter(runner: JobRunner, settings: Settings) -> JobLimiter:
    """This replica's admission, counted with every replica's in Redis when REDIS_URL is set."""
    server = settings.server
    args = (
        runner,
        server.max_concurrent_jobs or runner.service.max_concurrency,
        server.max_queued_jobs,
        server.max_queued_jobs_per_tenant,
        server.retry_after_s,
    )
    if settings.storage.redis_url:
        return SharedJobLimiter(*args, redis_url=settings.storage.redis_url, lease_s=server.job_lease_s)
    return JobLimiter(*args)
