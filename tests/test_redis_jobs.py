"""/v2 jobs in Redis (server/redis_jobs.py) shared by several replicas, against a real redis-server.

The replicas here are RedisV2Jobs objects on one event loop, each with its own JobLimiter, over a
scripted runner (the model is the boundary: what is under test is the queue, the leases, the cancels
and the result caps; tests/test_replicas.py runs real servers with the real model behind nginx).
A replica "dies" by freezing: its loops stop and its generations hang, as a killed process's would,
without acknowledging anything.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest
import redis

from fish_worker.errors import ErrorKind, JobFailure
from fish_worker.server.errors import ApiError
from fish_worker.server.limiter import JobLimiter
from fish_worker.server.redis_jobs import LOST_ERROR, SHUTDOWN_ERROR, RedisV2Jobs
from fish_worker.server.registry import FINAL


class ScriptedRunner:
    """Each job's input says what it does: `chunks` chunks `delay_s` apart, then `fail` or not.

    While `frozen` is set, a generation hangs between chunks (a replica killed mid-job)."""

    def __init__(self) -> None:
        self.frozen = asyncio.Event()
        self.started: list[str] = []
        self.stopped: list[str] = []  # generations closed before they ended (cancelled)

    async def stream(self, job):
        self.started.append(job.id)
        spec = job.input
        ended = False
        try:
            for i in range(spec.get("chunks", 1)):
                await asyncio.sleep(spec.get("delay_s", 0))
                while self.frozen.is_set():
                    await asyncio.sleep(3600)
                yield {"index": i, "text": spec.get("text", "")}
            if spec.get("fail"):
                yield JobFailure(ErrorKind.BAD_INPUT, "message: scripted failure", "message")
            ended = True
        finally:
            if not ended:
                self.stopped.append(job.id)


class Replica:
    def __init__(self, url: str, prefix: str, slots: int = 2, lease_s: float = 1.0, **caps: Any) -> None:
        self.runner = ScriptedRunner()
        self.limiter = JobLimiter(self.runner, max_concurrent_jobs=slots)
        options = dict(ttl_s=60, max_jobs=1000, max_bytes=1 << 30, max_queued=1000, max_queued_per_tenant=1000)
        options.update(caps)
        self.jobs = RedisV2Jobs(url, self.limiter, lease_s=lease_s, key_prefix=prefix, **options)

    def freeze(self) -> None:
        """Die: no more heartbeats, takes or sweeps; running generations hang."""
        self.runner.frozen.set()
        for task in self.jobs._tasks:
            task.cancel()


async def replicas(url: str, n: int, **options: Any) -> list[Replica]:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    started = [Replica(url, prefix, **options) for _ in range(n)]
    for replica in started:
        await replica.jobs.start()
    return started


async def close(started: list[Replica]) -> None:
    for replica in started:
        replica.runner.frozen.clear()
        await replica.jobs.close()


async def until_final(jobs: RedisV2Jobs, job_id: str, tenant: str | None = None, timeout_s: float = 20) -> dict:
    answer = await jobs.wait(job_id, tenant, timeout_s)
    assert answer is not None and answer["status"] in FINAL, answer
    return answer


async def until_running(jobs: RedisV2Jobs, job_id: str, tenant: str | None, timeout_s: float = 10) -> None:
    """Bounded: a job that ended instead (e.g. declared lost when a stalled machine let its lease lapse)
    fails the test with what it became, rather than the test spinning until its timeout."""
    deadline = time.monotonic() + timeout_s
    while (answer := await jobs.status(job_id, tenant))["status"] != "IN_PROGRESS":
        assert answer["status"] == "IN_QUEUE" and time.monotonic() < deadline, answer
        await asyncio.sleep(0.02)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.mark.timeout(60)
def test_a_job_submitted_on_one_replica_is_polled_and_streamed_through_another(redis_server):
    async def main():
        a, b = await replicas(redis_server, 2)
        try:
            job = await a.jobs.submit({"chunks": 3, "delay_s": 0.05, "stream": True, "text": "hi"}, "run", "alice")
            assert job["status"] == "IN_QUEUE"
            streamed, deadline = [], time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, streamed
                page = await b.jobs.stream(job["id"], "alice")
                streamed += [item["output"]["index"] for item in page["stream"]]
                if page["status"] in FINAL:
                    break
            assert streamed == [0, 1, 2]
            status = await a.jobs.status(job["id"], "alice")
            assert status["status"] == "COMPLETED" and "executionTime" in status and "delayTime" in status
            # Another tenant, or no tenant, sees no such job on any replica.
            assert await b.jobs.status(job["id"], "bob") is None
            assert await b.jobs.status(job["id"], None) is None
            assert await b.jobs.cancel(job["id"], "bob") is None
            whole = await a.jobs.submit({"chunks": 1}, "run", None)
            assert (await until_final(b.jobs, whole["id"]))["output"] == {"index": 0, "text": ""}
            counts = await b.jobs.counts("alice")
            assert counts["completed"] == 1 and counts["inQueue"] == counts["inProgress"] == 0
        finally:
            await close([a, b])

    run(main())


@pytest.mark.timeout(60)
def test_a_cancel_through_another_replica_stops_the_generation(redis_server):
    async def main():
        a, b = await replicas(redis_server, 2, slots=1)
        try:
            job = await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "alice")
            await until_running(b.jobs, job["id"], "alice")
            runner = a.runner if job["id"] in a.runner.started else b.runner
            cancelled_at = time.monotonic()
            assert (await b.jobs.cancel(job["id"], "alice"))["status"] == "CANCELLED"
            while job["id"] not in runner.stopped:
                assert time.monotonic() - cancelled_at < 5, "the generation did not stop"
                await asyncio.sleep(0.02)
            assert (await a.jobs.status(job["id"], "alice"))["status"] == "CANCELLED"
            # Queued ones too, and purge-queue through either replica.
            queued = [await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "carol") for _ in range(4)]
            removed = await b.jobs.purge_queue("carol")
            for job in queued:
                await b.jobs.cancel(job["id"], "carol")
            assert removed >= 2  # two may have been taken by the replicas' two slots before the purge
            for job in queued:
                assert (await until_final(a.jobs, job["id"], "carol"))["status"] == "CANCELLED"
        finally:
            await close([a, b])

    run(main())


@pytest.mark.timeout(60)
def test_tenant_limits_hold_across_replicas_and_free_when_jobs_end(redis_server):
    async def main():
        a, b = await replicas(redis_server, 2, slots=1, max_queued=3, max_queued_per_tenant=2)
        try:
            first = [await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "alice") for _ in range(2)]
            with pytest.raises(ApiError) as busy:
                await b.jobs.submit({"chunks": 1}, "run", "alice")
            assert busy.value.status == 429 and "FISH_MAX_QUEUED_JOBS_PER_TENANT" in busy.value.message
            await b.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "bob")
            with pytest.raises(ApiError) as full:
                await a.jobs.submit({"chunks": 1}, "run", "carol")
            assert full.value.status == 429 and "on all replicas" in full.value.message
            await b.jobs.cancel(first[0]["id"], "alice")
            again = await b.jobs.submit({"chunks": 1}, "run", "alice")
            assert again["status"] == "IN_QUEUE"
        finally:
            await close([a, b])

    run(main())


@pytest.mark.timeout(60)
def test_a_dead_replicas_running_job_fails_with_a_clear_error_and_its_taken_job_runs_elsewhere(redis_server):
    async def main():
        a, b = await replicas(redis_server, 2, slots=1, lease_s=1.0)
        try:
            b.freeze()  # only a takes jobs now
            running = await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "alice")
            await until_running(a.jobs, running["id"], "alice")
            # A second job, taken by a from the queue after its first ends: a dies first, so it stays queued.
            queued = await a.jobs.submit({"chunks": 2}, "run", "alice")
            a.freeze()
            died = time.monotonic()
            answer = await until_final(b.jobs, running["id"], "alice", timeout_s=20)
            detected_s = time.monotonic() - died
            assert answer["status"] == "FAILED"
            assert answer["error"] == LOST_ERROR.format(lease_s=1.0)
            assert detected_s < 1.0 + 2.0, detected_s  # the lease, plus a poll
            # b comes back to life (a new replica, same Redis): the queued job is run, not lost.
            c = await replicas_like(redis_server, a)
            try:
                assert (await until_final(c.jobs, queued["id"], "alice"))["status"] == "COMPLETED"
            finally:
                await close([c])
        finally:
            await close([a, b])

    run(main())


async def replicas_like(url: str, other: Replica) -> Replica:
    replica = Replica(url, other.jobs.prefix, slots=1, lease_s=1.0)
    await replica.jobs.start()
    return replica


@pytest.mark.timeout(60)
def test_a_job_a_dead_replica_took_but_never_started_is_claimed_and_run_by_another(redis_server):
    async def main():
        a = Replica(redis_server, f"test-{uuid.uuid4().hex[:8]}:", slots=1, lease_s=1.0)
        await a.jobs._redis.xgroup_create(a.jobs.queue, "workers", id="0", mkstream=True)
        try:  # a replica that only submits (never started: it takes nothing)
            job = await a.jobs.submit({"chunks": 1}, "run", None)
            # What a replica killed right after taking it leaves: the entry pending on it, the job queued.
            client = redis.Redis.from_url(redis_server)
            client.xreadgroup("workers", "dead-replica", {a.jobs.queue: ">"}, count=1)
            client.close()
            b = await replicas_like(redis_server, a)
            try:
                answer = await until_final(b.jobs, job["id"], None, timeout_s=15)
                assert answer["status"] == "COMPLETED" and job["id"] in b.runner.started
            finally:
                await close([b])
        finally:
            await close([a])

    run(main())


@pytest.mark.timeout(60)
def test_finished_results_are_capped_the_heaviest_tenants_oldest_first_and_expire(redis_server):
    async def main():
        (a,) = await replicas(redis_server, 1, slots=4, max_jobs=3, ttl_s=2)
        try:
            quiet = await a.jobs.submit({"chunks": 1}, "run", "quiet")
            await until_final(a.jobs, quiet["id"], "quiet")
            flood = []
            for _ in range(4):
                job = await a.jobs.submit({"chunks": 1}, "run", "flood")
                await until_final(a.jobs, job["id"], "flood")
                flood.append(job["id"])
            assert await a.jobs.status(quiet["id"], "quiet") is not None  # the flood pushed out its own
            kept = [await a.jobs.status(job_id, "flood") is not None for job_id in flood]
            assert kept == [False, False, True, True]
            await asyncio.sleep(2.2)
            last = await a.jobs.submit({"chunks": 1}, "run", "quiet")
            await until_final(a.jobs, last["id"], "quiet")  # a finish forgets what is past the TTL
            assert await a.jobs.status(quiet["id"], "quiet") is None
            assert await a.jobs.status(flood[-1], "flood") is None
        finally:
            await close([a])

    run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_schedules_every_job_ends_and_no_place_leaks(redis_server, seed):
    """3 replicas, random jobs (lengths, failures, streams) submitted, polled, streamed and cancelled
    through random replicas; one replica dies at a random moment. Every job must end: COMPLETED with all
    its chunks in order, FAILED (scripted, or lost with its replica), or CANCELLED; streamed chunks
    come out once each, in order; no admission place is left behind."""
    rng = random.Random(seed)

    async def main():
        group = await replicas(redis_server, 3, slots=2, lease_s=1.0)
        try:
            specs: dict[str, dict] = {}
            cancelled: set[str] = set()
            streamed: dict[str, list[int]] = {}
            victim = rng.choice(group)
            kill_after = rng.randint(3, 25)
            for n in range(30):
                spec = {
                    "chunks": rng.randint(1, 6),
                    "delay_s": rng.choice([0, 0.01, 0.05]),
                    "fail": rng.random() < 0.15,
                    "stream": rng.random() < 0.5,
                }
                via = rng.choice([r for r in group if r is not victim or not victim.runner.frozen.is_set()])
                job = await via.jobs.submit(spec, "run", rng.choice(["alice", "bob", None]))
                specs[job["id"]] = spec
                await asyncio.sleep(rng.choice([0, 0, 0.02, 0.1]))
                if rng.random() < 0.2:
                    target = rng.choice(list(specs))
                    cancelled.add(target)
                    await rng.choice(group).jobs.cancel(target, await _tenant_of(group[0], target))
                if n == kill_after:
                    victim.freeze()
            alive = [r for r in group if r is not victim]
            deadline = time.monotonic() + 40
            results = {}
            for job_id, spec in specs.items():
                tenant = await _tenant_of(group[0], job_id)
                if spec["stream"]:
                    got = streamed.setdefault(job_id, [])
                    while True:
                        page = await rng.choice(alive).jobs.stream(job_id, tenant)
                        got += [item["output"]["index"] for item in page["stream"]]
                        if page["status"] in FINAL:
                            break
                        assert time.monotonic() < deadline, f"job {job_id} never ended"
                results[job_id] = await until_final(rng.choice(alive).jobs, job_id, tenant, timeout_s=30)
            for job_id, answer in results.items():
                spec = specs[job_id]
                status = answer["status"]
                if status == "COMPLETED":
                    assert not spec["fail"]
                    if spec["stream"]:
                        assert streamed[job_id] == list(range(spec["chunks"]))
                        assert answer["output"]["chunks"] == spec["chunks"]
                    else:
                        assert answer["output"] == {"index": 0, "text": ""}
                elif status == "CANCELLED":
                    assert job_id in cancelled
                else:
                    assert status == "FAILED", answer
                    assert answer["error"] in ("message: scripted failure", LOST_ERROR.format(lease_s=1.0))
                    if answer["error"] != "message: scripted failure":
                        assert job_id in victim.runner.started  # only the dead replica's jobs are lost
                if spec["stream"] and status != "COMPLETED":
                    assert streamed[job_id] == list(range(len(streamed[job_id])))  # a prefix, once each
            client = redis.Redis.from_url(redis_server)
            try:
                now = time.time()
                places = client.zrangebyscore(group[0].jobs.prefix + "active", now, "+inf")
                assert places == [], "admission places left behind by ended jobs"
            finally:
                client.close()
        finally:
            await close(group)

    run(main())


async def _tenant_of(replica: Replica, job_id: str) -> str | None:
    tenant = await replica.jobs._redis.hget(replica.jobs.prefix + "job:" + job_id, "tenant")
    return tenant.decode() or None if tenant is not None else None


@pytest.mark.timeout(60)
def test_every_doors_admissions_count_across_replicas_with_the_v2_jobs_and_a_dead_replicas_expire(redis_server):
    """SharedJobLimiter (seed, OpenAI, Fish doors) and the /v2 jobs in Redis take places in the same
    sorted sets: the per-tenant cap holds across replicas and kinds; a replica that stops renewing
    (died) frees its places within a lease."""
    from fish_worker.server.shared_limits import SharedJobLimiter

    async def main():
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        limiters = [
            SharedJobLimiter(ScriptedRunner(), 2, 100, 3, redis_url=redis_server, lease_s=1.0, key_prefix=prefix)
            for _ in range(2)
        ]
        for limiter in limiters:
            await limiter.start()
        jobs = RedisV2Jobs(
            redis_server,
            limiters[0],
            ttl_s=60,
            max_jobs=100,
            max_bytes=1 << 30,
            max_queued=100,
            max_queued_per_tenant=3,
            lease_s=1.0,
            key_prefix=prefix,
        )
        try:
            first = limiters[0].admit("alice")
            second = limiters[1].admit("alice")
            await jobs.submit({"chunks": 1}, "run", "alice")  # queued (nothing takes it: not started)
            for limiter in limiters:
                with pytest.raises(ApiError) as busy:
                    limiter.admit("alice")
                assert busy.value.status == 429 and "FISH_MAX_QUEUED_JOBS_PER_TENANT" in busy.value.message
                assert limiter.admitted == 1  # a refusal holds nothing here
            limiters[1].admit("bob").release()  # another tenant is not held back
            first.release()
            first.release()  # idempotent
            third = limiters[1].admit("alice")
            await asyncio.sleep(2.5)  # renewed meanwhile: still held
            with pytest.raises(ApiError):
                limiters[0].admit("alice")
            # limiters[1] dies: it stops renewing, and its two places expire within a lease.
            limiters[1]._renewing.cancel()
            await asyncio.sleep(1.3)
            limiters[0].admit("alice")
            limiters[0].admit("alice")
            assert second and third
        finally:
            for limiter in limiters:
                await limiter.close()
            await jobs.close()

    run(main())


@pytest.mark.timeout(60)
def test_the_queue_is_made_again_when_redis_loses_it(redis_server):
    async def main():
        (a,) = await replicas(redis_server, 1)
        try:
            client = redis.Redis.from_url(redis_server)
            client.delete(a.jobs.queue)  # what a restarted or emptied Redis leaves: no stream, no group
            client.close()
            await asyncio.sleep(1.5)
            job = await a.jobs.submit({"chunks": 1}, "run", None)
            assert (await until_final(a.jobs, job["id"], timeout_s=15))["status"] == "COMPLETED"
        finally:
            await close([a])

    run(main())


@pytest.mark.timeout(60)
def test_a_replica_whose_lease_lapsed_never_renews_the_lease_of_the_replica_that_took_its_job_over(redis_server):
    """A replica stalled past its lease (a busy machine) while it held a job waiting for a slot; another
    replica claimed the job meanwhile. The first one's heartbeat must stop its own copy, not renew the
    lease in its name: else the job's lease outlives its real runner and a lost job is never reported."""

    async def main():
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        a = Replica(redis_server, prefix, slots=1, lease_s=1.0)
        a.jobs.slots = 2  # takes two, runs one: the second waits for a's generation slot
        await a.jobs.start()
        client = redis.Redis.from_url(redis_server)
        try:
            running = await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", None)
            await until_running(a.jobs, running["id"], None)
            held = await a.jobs.submit({"chunks": 1}, "run", None)
            deadline = time.monotonic() + 10
            while held["id"] not in a.jobs._running:
                assert time.monotonic() < deadline, "a did not take the second job"
                await asyncio.sleep(0.02)
            # What another replica's claim leaves once a's lease had lapsed: the job and its lease are its.
            client.hset(prefix + "job:" + held["id"], "owner", "other-replica")
            client.set(prefix + "lease:" + held["id"], "other-replica", px=5000)
            await asyncio.sleep(1.0)  # three of a's heartbeats
            assert client.get(prefix + "lease:" + held["id"]) == b"other-replica"
            assert held["id"] not in a.jobs._running and held["id"] not in a.runner.started
        finally:
            client.close()
            await close([a])


def test_a_stopped_replica_hands_back_its_taken_job_and_fails_its_running_one_at_once(redis_server):
    """close() (the server's shutdown): the job it took but never started is back in the queue and runs
    on another replica well within a lease; the one it ran is FAILED with the shutdown error at once;
    its admission places are freed (the /v2 ones and every door's)."""
    from fish_worker.server.shared_limits import SharedJobLimiter

    async def main():
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        a = Replica(redis_server, prefix, slots=1, lease_s=5.0)
        a.jobs.slots = 2  # takes two, runs one: the second waits for a's generation slot
        await a.jobs.start()
        b = None
        doors = SharedJobLimiter(ScriptedRunner(), 2, 100, 100, redis_url=redis_server, lease_s=5.0, key_prefix=prefix)
        await doors.start()
        try:
            doors.admit("alice")  # a seed/OpenAI/Fish request in flight on the stopping replica
            running = await a.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", "alice")
            await until_running(a.jobs, running["id"], "alice")
            held = await a.jobs.submit({"chunks": 2}, "run", "alice")
            client = redis.Redis.from_url(redis_server)
            deadline = time.monotonic() + 10
            while client.hget(prefix + "job:" + held["id"], "owner") != a.jobs.me.encode():
                assert time.monotonic() < deadline, "a did not take the second job"
                await asyncio.sleep(0.02)
            assert (await a.jobs.status(held["id"], "alice"))["status"] == "IN_QUEUE"  # taken, not started
            b = Replica(redis_server, prefix, slots=1, lease_s=5.0)
            await b.jobs.start()
            stopped_at = time.monotonic()
            await a.jobs.close()
            await doors.close()
            close_s = time.monotonic() - stopped_at
            answer = await b.jobs.status(running["id"], "alice")
            assert answer["status"] == "FAILED" and answer["error"] == SHUTDOWN_ERROR, answer
            assert running["id"] in a.runner.stopped  # its generation was stopped too
            done = await until_final(b.jobs, held["id"], "alice", timeout_s=10)
            rerun_s = time.monotonic() - stopped_at
            assert done["status"] == "COMPLETED" and held["id"] in b.runner.started
            assert held["id"] not in a.runner.started
            assert close_s < 2.0 and rerun_s < 5.0, (close_s, rerun_s)  # neither waited for the 5 s lease
            print(f"stopped replica: close {close_s:.2f} s; its taken job COMPLETED elsewhere {rerun_s:.2f} s after")
            assert client.zrange(prefix + "active", 0, -1) == []  # every place freed
            client.close()
        finally:
            await close([a] + ([b] if b else []))

    run(main())


@pytest.mark.timeout(60)
def test_health_counts_the_slots_of_every_live_replica(redis_server):
    """/v2/health's workers with REDIS_URL: each replica publishes its generation slots and how many run
    at every heartbeat; the sum covers the live ones, drops one that died within a lease and one that
    stopped at once."""

    async def main():
        a, b, c = await replicas(redis_server, 3, slots=2, lease_s=1.0)
        try:
            assert await a.jobs.worker_slots() == (6, 0)
            job = await b.jobs.submit({"chunks": 1000, "delay_s": 0.02}, "run", None)
            await until_running(a.jobs, job["id"], None)
            deadline = time.monotonic() + 5
            while await c.jobs.worker_slots() != (6, 1):  # published at the runner's next heartbeat
                assert time.monotonic() < deadline, await c.jobs.worker_slots()
                await asyncio.sleep(0.05)
            await c.jobs.cancel(job["id"], None)
            c.freeze()  # dies: no more heartbeats
            await a.jobs.close()  # stops: forgotten at once
            assert (await b.jobs.worker_slots())[0] == 4
            # The frozen one drops out once its last heartbeat's lease (1 s) has passed; the bound is
            # generous because a loaded machine can delay that last heartbeat's write.
            deadline = time.monotonic() + 6
            while await b.jobs.worker_slots() != (2, 0):
                assert time.monotonic() < deadline, await b.jobs.worker_slots()
                await asyncio.sleep(0.1)
        finally:
            await close([a, b, c])

    run(main())
