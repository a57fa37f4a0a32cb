"""/v2 jobs shared by every replica through Redis (REDIS_URL): submit anywhere, poll, stream or cancel anywhere.

Where things are (keys under `fish-worker:v2:`):

- `job:<id>`       a hash: tenant, status, times, error, the input (until the job ends), who runs it,
                   how many of its chunks /stream has handed out. Expires FISH_JOB_TTL_S after it ends.
- `chunks:<id>`    a list: the job's output chunks as JSON, appended as they are made (what /stream reads
                   from any replica, and a finished job's output). Expires with the job.
- `queue`          a Redis Stream, consumer group `workers`: one entry per queued job. Each replica reads
                   it (XREADGROUP) only while it has a free slot, so a job goes to whichever replica has
                   room; an entry is acknowledged (XACK) when its job ends.
- `lease:<id>`     "this replica runs this job": set when a replica takes the job, with a TTL of
                   FISH_JOB_LEASE_S that the replica's heartbeat renews while the job lives. A replica that
                   dies stops renewing: once the lease is gone, the next status poll (on any replica) or any
                   replica's sweep reports the job FAILED. Entries a dead replica took but never started
                   are claimed by another replica (XAUTOCLAIM) and run there.
- `active`, `active:t:<tenant>`  sorted sets of the jobs admitted (queued or running), scored by when
                   their place expires: far off while queued (the job's TTL), one lease ahead while running
                   (renewed by the heartbeat). Admission counts them, so FISH_MAX_QUEUED_JOBS and
                   FISH_MAX_QUEUED_JOBS_PER_TENANT hold across replicas, and a dead replica's places expire.
- `finished`, `finished:t:<tenant>`, `finished_info`, `held_jobs`, `held_bytes`, `total_bytes`: the
                   finished jobs, to forget them after the TTL and past FISH_MAX_STORED_JOBS /
                   FISH_MAX_STORED_RESULT_BYTES, the heaviest tenant's oldest first (as in registry.py).
- `replicas`, `replica_load`  the live replicas (a sorted set scored by when each stops counting as live,
                   one lease after its last heartbeat) and each one's generation slots and how many are in use
                   ("slots running"), for /v2/health's `workers` summed over the whole service.
- `jobs:t:<tenant>` a sorted set of the tenant's job ids, for /health's counts and /purge-queue.

Every change of a job's status is one Lua script, so a cancel, a finish and a dead-replica verdict
never overwrite each other: the first to end the job wins, the others change nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from fish_worker.errors import ErrorKind, JobFailure
from fish_worker.jobs.job import Job, ResultRoute
from fish_worker.jobs.outputs import final_output
from fish_worker.server.errors import ApiError, status_of
from fish_worker.server.limiter import JobLimiter
from fish_worker.server.registry import FINAL, STREAM_HOLD_S, approx_json_bytes

log = logging.getLogger(__name__)

KEY_PREFIX = "fish-worker:v2:"
GROUP = "workers"
LOST_ERROR = (
    "the replica running this job stopped (no heartbeat for {lease_s:g} s, FISH_JOB_LEASE_S): "
    "the job was lost; submit it again"
)
SHUTDOWN_ERROR = "the replica running this job stopped (it was shut down) before the job ended; submit it again"

# Admit a job: drop expired places, check the service's and the tenant's counts, then record and queue it.
_SUBMIT = """
local P, id, t, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local all, mine = P .. 'active', P .. 'active:t:' .. t
redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
redis.call('ZREMRANGEBYSCORE', mine, '-inf', now)
local n_all, n_mine = redis.call('ZCARD', all), redis.call('ZCARD', mine)
if n_all >= tonumber(ARGV[6]) then return {1, n_all} end
if n_mine >= tonumber(ARGV[7]) then return {2, n_mine} end
redis.call('ZADD', all, ARGV[5], id)
redis.call('ZADD', mine, ARGV[5], id)
local key = P .. 'job:' .. id
redis.call('HSET', key, 'tenant', t, 'status', 'IN_QUEUE', 'stream', ARGV[8], 'route', ARGV[9],
           'input', ARGV[10], 'submitted_at', ARGV[4], 'bytes', 0, 'streamed', 0)
redis.call('EXPIRE', key, ARGV[11])
redis.call('ZADD', P .. 'jobs:t:' .. t, now, id)
redis.call('XADD', P .. 'queue', '*', 'id', id)
return {0, 0}
"""

# Take a queued job: only if it is still queued and no live replica holds its lease.
_CLAIM = """
local P, id, me = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'job:' .. id
local status = redis.call('HGET', key, 'status')
if status ~= 'IN_QUEUE' then return status or 'GONE' end
local lease = P .. 'lease:' .. id
local holder = redis.call('GET', lease)
if holder and holder ~= me then return 'LEASED' end
redis.call('SET', lease, me, 'PX', ARGV[4])
redis.call('HSET', key, 'owner', me)
redis.call('EXPIRE', key, ARGV[5])
local t = redis.call('HGET', key, 'tenant')
redis.call('ZADD', P .. 'active', 'XX', ARGV[6], id)
redis.call('ZADD', P .. 'active:t:' .. t, 'XX', ARGV[6], id)
return 'CLAIMED'
"""

# Give a job this replica took but never started back to the queue (it is shutting down): a new entry
# that any replica reads at once, instead of the old one waiting a lease to be claimed (XAUTOCLAIM).
_REQUEUE = """
local P, id, me, entry, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = P .. 'job:' .. id
if redis.call('HGET', key, 'status') ~= 'IN_QUEUE' then return 0 end
local lease = P .. 'lease:' .. id
local holder = redis.call('GET', lease)
if holder and holder ~= me then return 0 end
redis.call('DEL', lease)
redis.call('HDEL', key, 'owner')
redis.call('XACK', P .. 'queue', group, entry)
redis.call('XDEL', P .. 'queue', entry)
redis.call('XADD', P .. 'queue', '*', 'id', id)
local t = redis.call('HGET', key, 'tenant')
redis.call('ZADD', P .. 'active', 'XX', ARGV[6], id)
redis.call('ZADD', P .. 'active:t:' .. t, 'XX', ARGV[6], id)
return 1
"""

# The heartbeat: renew the lease and the places of each job this replica still owns; 0 for one it must
# stop (ended: cancelled, declared lost; or taken over by another replica after its lease lapsed, which
# a renewal must not overwrite: that replica's lease would be in this one's name, and outlive its runner).
_RENEW = """
local P, me, expiry, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', P .. 'job:' .. id, 'status', 'owner', 'tenant')
  if (f[1] == 'IN_QUEUE' or f[1] == 'IN_PROGRESS') and f[2] == me then
    redis.call('SET', P .. 'lease:' .. id, me, 'PX', lease_ms)
    redis.call('ZADD', P .. 'active', 'XX', expiry, id)
    redis.call('ZADD', P .. 'active:t:' .. f[3], 'XX', expiry, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# The live replicas' generation slots and how many run (/v2/health): forget those whose heartbeat stopped.
_WORKERS = """
local P, now = ARGV[1], ARGV[2]
local gone = redis.call('ZRANGEBYSCORE', P .. 'replicas', '-inf', now)
if #gone > 0 then redis.call('HDEL', P .. 'replica_load', unpack(gone)) end
redis.call('ZREMRANGEBYSCORE', P .. 'replicas', '-inf', now)
local live = redis.call('ZRANGE', P .. 'replicas', 0, -1)
if #live == 0 then return {} end
return redis.call('HMGET', P .. 'replica_load', unpack(live))
"""

# Acknowledge a job's entry once the job has ended, else leave it pending: a replica whose copy stopped
# because another took the job over (after its lease lapsed) shares that entry with the new owner, and
# must not delete it, or a job the new owner then loses would have no entry left for a sweep to find.
_ACK_ENDED = """
local P, id, entry, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local status = redis.call('HGET', P .. 'job:' .. id, 'status')
if status == 'IN_QUEUE' or status == 'IN_PROGRESS' then return 0 end
redis.call('XACK', P .. 'queue', group, entry)
redis.call('XDEL', P .. 'queue', entry)
return 1
"""

_START = """
local key = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', key, 'status') ~= 'IN_QUEUE' or redis.call('HGET', key, 'owner') ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'status', 'IN_PROGRESS', 'started_at', ARGV[4])
return 1
"""

_APPEND = """
local P, id = ARGV[1], ARGV[2]
local key = P .. 'job:' .. id
local status = redis.call('HGET', key, 'status')
if (status ~= 'IN_PROGRESS' and status ~= 'IN_QUEUE') or redis.call('HGET', key, 'owner') ~= ARGV[3] then return 0 end
redis.call('RPUSH', P .. 'chunks:' .. id, ARGV[4])
redis.call('EXPIRE', P .. 'chunks:' .. id, ARGV[6])
redis.call('HINCRBY', key, 'bytes', ARGV[5])
return 1
"""

# End a job (mode 'owner': only its runner; 'any': a cancel; 'dead': only if running with no lease),
# then forget finished jobs past the TTL and over the caps, the heaviest tenant's oldest first.
_FINISH = """
local P, id, new_status, err, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, ttl, max_jobs, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local mode, me = ARGV[10], ARGV[11]
local key = P .. 'job:' .. id
local status = redis.call('HGET', key, 'status')
if not status or status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELLED' or status == 'TIMED_OUT' then
  return 0
end
if mode == 'owner' and redis.call('HGET', key, 'owner') ~= me then return 0 end
if mode == 'dead' and (status ~= 'IN_PROGRESS' or redis.call('EXISTS', P .. 'lease:' .. id) == 1) then return 0 end
local t = redis.call('HGET', key, 'tenant')
redis.call('HSET', key, 'status', new_status, 'finished_at', ARGV[6])
if err ~= '' then redis.call('HSET', key, 'error', err, 'error_kind', kind) end
redis.call('HDEL', key, 'input')
redis.call('EXPIRE', key, ttl)
redis.call('EXPIRE', P .. 'chunks:' .. id, ttl)
redis.call('DEL', P .. 'lease:' .. id)
redis.call('ZREM', P .. 'active', id)
redis.call('ZREM', P .. 'active:t:' .. t, id)
local bytes = tonumber(redis.call('HGET', key, 'bytes') or '0')
redis.call('ZADD', P .. 'finished', now, id)
redis.call('ZADD', P .. 'finished:t:' .. t, now, id)
redis.call('HSET', P .. 'finished_info', id, bytes .. '|' .. t)
redis.call('HINCRBY', P .. 'held_jobs', t, 1)
redis.call('HINCRBY', P .. 'held_bytes', t, bytes)
redis.call('INCRBY', P .. 'total_bytes', bytes)

local function forget(old)
  local info = redis.call('HGET', P .. 'finished_info', old)
  redis.call('ZREM', P .. 'finished', old)
  if not info then return end
  local sep = string.find(info, '|', 1, true)
  local b, ot = tonumber(string.sub(info, 1, sep - 1)), string.sub(info, sep + 1)
  redis.call('HDEL', P .. 'finished_info', old)
  redis.call('ZREM', P .. 'finished:t:' .. ot, old)
  redis.call('ZREM', P .. 'jobs:t:' .. ot, old)
  redis.call('DECRBY', P .. 'total_bytes', b)
  if redis.call('HINCRBY', P .. 'held_jobs', ot, -1) <= 0 then
    redis.call('HDEL', P .. 'held_jobs', ot)
    redis.call('HDEL', P .. 'held_bytes', ot)
  else
    redis.call('HINCRBY', P .. 'held_bytes', ot, -b)
  end
  redis.call('DEL', P .. 'job:' .. old, P .. 'chunks:' .. old)
end

for _, old in ipairs(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. (now - ttl))) do forget(old) end
while true do
  local count = redis.call('ZCARD', P .. 'finished')
  local total = tonumber(redis.call('GET', P .. 'total_bytes') or '0')
  if count == 0 or (count <= max_jobs and total <= max_bytes) then break end
  local held = redis.call('HGETALL', P .. ((count > max_jobs) and 'held_jobs' or 'held_bytes'))
  local heaviest, most = nil, -1
  for i = 1, #held, 2 do
    local n = tonumber(held[i + 1])
    if n > most then heaviest, most = held[i], n end
  end
  local oldest = heaviest and redis.call('ZRANGE', P .. 'finished:t:' .. heaviest, 0, 0)[1]
  if not oldest then oldest = redis.call('ZRANGE', P .. 'finished', 0, 0)[1] end
  forget(oldest)
end
return 1
"""

# The chunks /stream has not handed out yet, each handed out once whichever replica is asked.
_STREAM = """
local P, id = ARGV[1], ARGV[2]
local key = P .. 'job:' .. id
local f = redis.call('HMGET', key, 'tenant', 'status', 'streamed', 'error')
if not f[1] or f[1] ~= ARGV[3] then return false end
local cursor = tonumber(f[3])
local new = redis.call('LRANGE', P .. 'chunks:' .. id, cursor, -1)
if #new > 0 then redis.call('HSET', key, 'streamed', cursor + #new) end
return {f[2], f[4] or '', new}
"""


class _Unadmitted:
    """A queued job's place is in Redis (`active`), not in this replica's JobLimiter."""

    def release(self) -> None:
        pass


@dataclass
class _Running:
    tenant: str
    task: asyncio.Task | None = None


def _tenant_key(tenant: str | None) -> str:
    return tenant or ""  # tenant names are never empty (tenancy.py), so "" is the keyless server's


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise ApiError(status_of(ErrorKind.UNAVAILABLE), f"job store unavailable: {type(exc).__name__}: {exc}") from exc


class RedisV2Jobs:
    def __init__(
        self,
        url: str,
        limiter: JobLimiter,
        *,
        ttl_s: float,
        max_jobs: int,
        max_bytes: int,
        max_queued: int,
        max_queued_per_tenant: int,
        lease_s: float,
        retry_after_s: int = 5,
        key_prefix: str = KEY_PREFIX,
        slots: int | None = None,
    ) -> None:
        self.limiter = limiter
        self.ttl_s = int(max(1, round(ttl_s)))
        self.max_jobs, self.max_bytes = max_jobs, max_bytes
        self.max_queued, self.max_queued_per_tenant = max_queued, max_queued_per_tenant
        self.lease_s = lease_s
        self.heartbeat_s = min(1.0, lease_s / 3)  # also how soon a cancel from another replica is seen
        self.retry_after_s = retry_after_s
        self.prefix = key_prefix
        self.queue = key_prefix + "queue"
        self.me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Jobs this replica takes from the queue at once: its generation slots, so a queued job waits in
        # Redis for whichever replica frees a slot first, not in one replica's memory.
        # (A sweep may run a reclaimed job while the take loop waits on the queue with the last room:
        # one job over, which then waits for a generation slot in this replica's JobLimiter.)
        self.slots = slots or limiter.max_concurrent_jobs
        self._taken = 0
        self._room_changed = asyncio.Condition()
        self._running: dict[str, _Running] = {}
        self._taken_entries: dict[asyncio.Task, tuple[bytes, str]] = {}  # each taken job's task: (entry, job)
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        # BLOCK on the queue is 1 s: the socket timeout must be longer.
        # Replies are bytes (decode_responses off); redis-py types them as bytes | str unions, so the
        # values this module decodes are annotated Any where they are read.
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=10.0)
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in (
                ("submit", _SUBMIT),
                ("claim", _CLAIM),
                ("requeue", _REQUEUE),
                ("renew", _RENEW),
                ("ack_ended", _ACK_ENDED),
                ("workers", _WORKERS),
                ("start", _START),
                ("append", _APPEND),
                ("finish", _FINISH),
                ("stream", _STREAM),
            )
        }

    # ---- the door's side --------------------------------------------------------------------------

    async def submit(self, job_input: Any, route: ResultRoute, tenant: str | None) -> dict[str, Any]:
        job = Job(id=str(uuid.uuid4()), input=job_input, tenant=tenant, result_route=route)
        now = time.time()
        # ensure_ascii: a lone surrogate (refused later, by the job's own checks) survives the round trip.
        text = json.dumps(job_input)
        with _store_errors():
            refused, count = await self._scripts["submit"](
                args=[
                    self.prefix,
                    job.id,
                    _tenant_key(tenant),
                    now,
                    now + self.ttl_s,
                    self.max_queued,
                    self.max_queued_per_tenant,
                    int(job.streamed),
                    route,
                    text,
                    self.ttl_s,
                ]
            )
        if refused:
            message = (
                f"server busy: {count} jobs running or queued on all replicas (FISH_MAX_QUEUED_JOBS)"
                if refused == 1
                else f"too many jobs of yours running or queued: {count} (FISH_MAX_QUEUED_JOBS_PER_TENANT)"
            )
            raise ApiError(
                status_of(ErrorKind.BUSY),
                f"{message}; retry in {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        return {"id": job.id, "status": "IN_QUEUE"}

    async def status(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        with _store_errors():
            fields = await self._fields(job_id, tenant)
            if fields is None:
                return None
            if fields["status"] == "IN_PROGRESS" and await self._fail_if_lost(job_id):
                fields = await self._fields(job_id, tenant)
            chunks = await self._chunks(job_id) if fields and fields["status"] == "COMPLETED" else []
        return None if fields is None else _status_json(job_id, fields, chunks)

    async def wait(self, job_id: str, tenant: str | None, timeout_s: float) -> dict[str, Any] | None:
        deadline, pause = time.monotonic() + timeout_s, 0.01
        while True:
            answer = await self.status(job_id, tenant)
            if answer is None or answer["status"] in FINAL or time.monotonic() >= deadline:
                return answer
            # Soon for a short job, then less often: a long one costs Redis ~4 reads a second per waiter.
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(0.25, pause * 1.5)

    async def stream(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        deadline = time.monotonic() + STREAM_HOLD_S
        with _store_errors():
            while True:
                got = await self._scripts["stream"](args=[self.prefix, job_id, _tenant_key(tenant)])
                if not got:
                    return None
                status, error, new = got[0].decode(), got[1].decode(), got[2]
                if status == "IN_PROGRESS" and not new and await self._fail_if_lost(job_id):
                    continue
                if new or status in FINAL or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
        out: dict[str, Any] = {"status": status, "stream": [{"output": json.loads(chunk)} for chunk in new]}
        if error:
            out["error"] = error
        return out

    async def cancel(self, job_id: str, tenant: str | None) -> dict[str, Any] | None:
        with _store_errors():
            if await self._fields(job_id, tenant) is None:
                return None
            # The replica running it sees the status at its next heartbeat and stops the generation.
            await self._finish(job_id, "CANCELLED", mode="any")
            fields = await self._fields(job_id, tenant)
        return {"id": job_id, "status": fields["status"] if fields else "CANCELLED"}

    async def purge_queue(self, tenant: str | None) -> int:
        removed = 0
        for job_id, status in await self._statuses(tenant):
            if status == "IN_QUEUE" and (await self.cancel(job_id, tenant) or {}).get("status") == "CANCELLED":
                removed += 1
        return removed

    async def counts(self, tenant: str | None) -> dict[str, int]:
        statuses = [status for _, status in await self._statuses(tenant)]
        return {
            "completed": statuses.count("COMPLETED"),
            "failed": statuses.count("FAILED") + statuses.count("CANCELLED"),
            "inProgress": statuses.count("IN_PROGRESS"),
            "inQueue": statuses.count("IN_QUEUE"),
            "retried": 0,
        }

    async def worker_slots(self) -> tuple[int, int]:
        """(generation slots, slots in use) of every live replica together (each publishes its own at
        every heartbeat; one whose heartbeat stopped a lease ago no longer counts)."""
        with _store_errors():
            loads: list[Any] = await self._scripts["workers"](args=[self.prefix, time.time()])
        pairs = [tuple(int(n) for n in load.split()) for load in loads if load]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    # ---- the replica's side: take queued jobs, run them, keep their leases --------------------------

    async def start(self) -> None:
        with suppress(redis.ResponseError):  # BUSYGROUP: another replica made it first
            await self._redis.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
        with suppress(redis.RedisError):
            await self._publish_load()
        for name, loop in (("take", self._take_loop), ("heartbeat", self._heartbeat_loop), ("sweep", self._sweep_loop)):
            self._tasks.append(asyncio.create_task(loop(), name=f"v2-{name}"))
        log.info("/v2 jobs in Redis: replica %s takes up to %d queued jobs at once", self.me, self.slots)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop this replica's part (it is shutting down): take nothing more; the jobs it took but never
        started go back to the queue at once, for another replica; those it runs end FAILED
        (SHUTDOWN_ERROR) and free their places. Each step is bounded by `timeout_s`, whatever Redis does."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        taken = dict(self._taken_entries)
        for task in taken:
            task.cancel()  # first, so no generation goes on writing after its job is handed back
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    self._forget_load(), *(self._hand_back(entry_id, job_id) for entry_id, job_id in taken.values())
                ),
                timeout_s,
            )
        except (TimeoutError, redis.RedisError) as exc:
            log.warning("/v2 jobs: handing back this replica's jobs failed (%r); their leases will expire", exc)
        if taken:
            await asyncio.wait(taken, timeout=timeout_s)
        with suppress(TimeoutError, redis.RedisError):
            await asyncio.wait_for(self._redis.aclose(), timeout_s)

    async def _hand_back(self, entry_id: bytes, job_id: str) -> None:
        """A job taken by this replica, which stops: back to the queue if it never started, else FAILED."""
        requeued = await self._scripts["requeue"](
            args=[self.prefix, job_id, self.me, entry_id, GROUP, time.time() + self.ttl_s]
        )
        if requeued:
            log.info("/v2 job %s: not started here; back to the queue for another replica", job_id)
            return
        if await self._finish(job_id, "FAILED", SHUTDOWN_ERROR, ErrorKind.UNAVAILABLE):
            log.warning("/v2 job %s: this replica stopped while it ran; reported FAILED", job_id)
            await self._ack(entry_id)
        # else another replica holds the job (or it ended): the entry stays pending for the sweeps

    async def _take_loop(self) -> None:
        while True:
            async with self._room_changed:
                await self._room_changed.wait_for(self._has_room)
            try:
                got: Any = await self._redis.xreadgroup(GROUP, self.me, {self.queue: ">"}, count=1, block=1000)
            except redis.RedisError as exc:
                log.warning("taking a /v2 job from Redis failed (%s); retrying in 1 s", exc)
                if "NOGROUP" in str(exc):  # Redis was emptied or restarted: make the queue again
                    with suppress(redis.RedisError):
                        await self._redis.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
                await asyncio.sleep(1)
                continue
            if got:
                entry_id, fields = got[0][1][0]
                self._spawn(entry_id, fields[b"id"].decode())

    def _has_taken(self, job_id: str) -> bool:
        """Whether a task of this replica's already holds the job (waiting for a slot, or just taken)."""
        return any(taken == job_id for _, taken in self._taken_entries.values())

    def _has_room(self) -> bool:
        return self._taken < self.slots

    def _spawn(self, entry_id: bytes, job_id: str) -> None:
        """Run the entry's job in a task of its own, which gives back its room when it ends."""
        self._taken += 1
        task = asyncio.create_task(self._take(entry_id, job_id), name=f"v2-job-{job_id}")
        self._taken_entries[task] = (entry_id, job_id)
        task.add_done_callback(self._taken_ended)

    def _taken_ended(self, task: asyncio.Task) -> None:
        self._taken_entries.pop(task, None)
        if not self._closing:
            asyncio.ensure_future(self._give_back_room())

    async def _give_back_room(self) -> None:
        async with self._room_changed:
            self._taken -= 1
            self._room_changed.notify_all()

    async def _take(self, entry_id: bytes, job_id: str) -> None:
        try:
            claimed = (
                await self._scripts["claim"](
                    args=[self.prefix, job_id, self.me, self._lease_ms(), self.ttl_s, time.time() + self.lease_s]
                )
            ).decode()
            if claimed != "CLAIMED":
                if claimed not in ("LEASED", "IN_PROGRESS"):  # gone, or already ended (e.g. cancelled)
                    await self._ack(entry_id)
                return
            raw: list[Any] = await self._redis.hmget(self.prefix + "job:" + job_id, "input", "tenant", "route")
        except redis.RedisError as exc:
            log.warning("taking /v2 job %s failed: %s", job_id, exc)
            return
        if raw[0] is None:  # ended (cancelled) between the claim and the read: nothing to run
            with suppress(redis.RedisError):
                await self._ack(entry_id)
            return
        tenant = raw[1].decode()
        job = Job(id=job_id, input=json.loads(raw[0]), tenant=tenant or None, result_route=raw[2].decode())
        running = self._running[job_id] = _Running(tenant, asyncio.current_task())
        try:
            await self._run(job)
        finally:
            if self._running.get(job_id) is running:
                del self._running[job_id]
            if not self._closing:  # else close() hands the job back (requeued or FAILED) and acknowledges
                with suppress(redis.RedisError):
                    await asyncio.shield(self._scripts["ack_ended"](args=[self.prefix, job_id, entry_id, GROUP]))

    async def _run(self, job: Job) -> None:
        started: list[asyncio.Task] = []
        chunks = self.limiter.run(
            job,
            _Unadmitted(),
            on_start=lambda: started.append(
                asyncio.create_task(self._scripts["start"](args=[self.prefix, job.id, self.me, time.time()]))
            ),
        )
        try:
            async for event in chunks:
                if started and not await started[0]:
                    return  # ended, or taken over by another replica, while it waited for a slot here
                if isinstance(event, JobFailure):
                    await self._finish(job.id, "FAILED", event.message, event.kind)
                    return
                text = json.dumps(event)
                if not await self._scripts["append"](
                    args=[self.prefix, job.id, self.me, text, approx_json_bytes(event), self.ttl_s]
                ):
                    return  # cancelled, or declared lost, meanwhile: stop generating
            if started and not await started[0]:
                return
            await self._finish(job.id, "COMPLETED")
        except redis.RedisError as exc:
            log.warning("/v2 job %s: Redis failed while it ran: %s", job.id, exc)
            with suppress(redis.RedisError):
                await self._finish(job.id, "FAILED", f"job store unavailable: {exc}", ErrorKind.UNAVAILABLE)
        except Exception as exc:  # the runner reports its own errors; this is a bug of ours
            await self._finish(job.id, "FAILED", f"internal error: {type(exc).__name__}: {exc}", ErrorKind.INTERNAL)
        finally:
            await chunks.aclose()

    async def _heartbeat_loop(self) -> None:
        """Renew the leases of this replica's jobs; stop those ended elsewhere (cancelled, declared lost)
        or taken over by another replica (this one's lease lapsed: a frozen loop, a stalled machine)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            jobs = list(self._running.items())
            try:
                await self._publish_load()
                if not jobs:
                    continue
                kept = await self._scripts["renew"](
                    args=[self.prefix, self.me, time.time() + self.lease_s, self._lease_ms(), *(i for i, _ in jobs)]
                )
                for (_, running), mine in zip(jobs, kept):
                    if not mine and running.task is not None:
                        running.task.cancel()  # its generator closes: the generation stops
            except redis.RedisError as exc:
                log.warning("/v2 heartbeat failed: %s", exc)

    async def _publish_load(self) -> None:
        """This replica is live for one more lease, with its generation slots and how many are in use."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.prefix + "replicas", {self.me: time.time() + self.lease_s})
            pipe.hset(
                self.prefix + "replica_load", self.me, f"{self.limiter.max_concurrent_jobs} {self.limiter.running}"
            )
            await pipe.execute()

    async def _forget_load(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.prefix + "replicas", self.me)
            pipe.hdel(self.prefix + "replica_load", self.me)
            await pipe.execute()

    async def _sweep_loop(self) -> None:
        """Entries a replica took and never acknowledged, idle for a lease: run them here if their job
        never started (that replica died first), report them FAILED if it was running and lost its lease."""
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                await self._sweep()
            except redis.RedisError as exc:
                log.warning("/v2 sweep failed: %s", exc)

    async def _sweep(self) -> None:
        start = "0-0"
        while True:
            start, entries, *_ = await self._redis.xautoclaim(
                self.queue, GROUP, self.me, self._lease_ms(), start_id=start, count=20
            )
            for entry_id, fields in entries:
                job_id = fields[b"id"].decode()
                stored: Any = await self._redis.hget(self.prefix + "job:" + job_id, "status")
                status = stored.decode() if stored else None
                if status == "IN_PROGRESS":
                    await self._fail_if_lost(job_id)
                    stored = await self._redis.hget(self.prefix + "job:" + job_id, "status")
                    status = (stored or b"").decode()
                if status is None or status in FINAL:
                    await self._ack(entry_id)
                elif status == "IN_QUEUE" and not self._has_taken(job_id) and self._has_room():
                    self._spawn(entry_id, job_id)
            if start in (b"0-0", "0-0"):
                return

    # ---- helpers ----------------------------------------------------------------------------------

    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def _fields(self, job_id: str, tenant: str | None) -> dict[str, str] | None:
        raw: dict[Any, Any] = await self._redis.hgetall(self.prefix + "job:" + job_id)
        fields = {k.decode(): v.decode() for k, v in raw.items() if k != b"input"}
        if not fields or fields.get("tenant") != _tenant_key(tenant):
            return None
        return fields

    async def _chunks(self, job_id: str) -> list[Any]:
        return [json.loads(chunk) for chunk in await self._redis.lrange(self.prefix + "chunks:" + job_id, 0, -1)]

    async def _fail_if_lost(self, job_id: str) -> bool:
        """Report a running job whose lease has expired FAILED; whether this call did."""
        if await self._redis.exists(self.prefix + "lease:" + job_id):
            return False
        failed = await self._finish(
            job_id, "FAILED", LOST_ERROR.format(lease_s=self.lease_s), ErrorKind.UNAVAILABLE, mode="dead"
        )
        if failed:
            log.warning("/v2 job %s: its replica stopped renewing its lease; reported FAILED", job_id)
        return failed

    async def _finish(
        self, job_id: str, status: str, error: str = "", kind: ErrorKind | None = None, mode: str = "owner"
    ) -> bool:
        return bool(
            await self._scripts["finish"](
                args=[
                    self.prefix,
                    job_id,
                    status,
                    error,
                    kind.value if kind else "",
                    time.time(),
                    self.ttl_s,
                    self.max_jobs,
                    self.max_bytes,
                    mode,
                    self.me,
                ]
            )
        )

    async def _ack(self, entry_id: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.queue, GROUP, entry_id)
            pipe.xdel(self.queue, entry_id)
            await pipe.execute()

    async def _statuses(self, tenant: str | None) -> list[tuple[str, str]]:
        key = self.prefix + "jobs:t:" + _tenant_key(tenant)
        with _store_errors():
            members: list[Any] = await self._redis.zrange(key, 0, -1)
            ids = [i.decode() for i in members]
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.prefix + "job:" + job_id, "status")
                statuses = await pipe.execute()
            gone = [job_id for job_id, status in zip(ids, statuses) if status is None]
            if gone:
                await self._redis.zrem(key, *gone)  # expired with their TTL
        return [(job_id, status.decode()) for job_id, status in zip(ids, statuses) if status is not None]


def _status_json(job_id: str, fields: dict[str, str], chunks: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": job_id, "status": fields["status"]}
    submitted, started, finished = (
        float(fields[k]) if fields.get(k) else None for k in ("submitted_at", "started_at", "finished_at")
    )
    if started is not None and submitted is not None:
        out["delayTime"] = round((started - submitted) * 1000)
    if finished is not None and started is not None:
        out["executionTime"] = round((finished - started) * 1000)
    if fields["status"] == "COMPLETED":
        out["output"] = final_output(chunks, fields.get("stream") == "1")
    if fields.get("error"):
        out["error"] = fields["error"]
    return out
