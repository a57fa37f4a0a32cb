"""fish_worker/jobs/runpod_adapter.py: the SDK internals it stands on, and its per-job reporting.

The first tests fail when a runpod release changes what the adapter relies on: then re-read
rp_scale.py / rp_job.py / rp_http.py and adjust the adapter (and the pin in requirements.txt).
"""

from __future__ import annotations

import asyncio
import inspect
import random

import pytest
import runpod
from runpod.serverless.modules import rp_http, rp_job, rp_scale

from fish_worker.errors import ErrorKind, JobFailure
from fish_worker.jobs.job import Job
from fish_worker.jobs.runpod_adapter import RUNPOD_VERSION, QueueJobHandler, body_bytes, install, run_local


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_runpod_is_the_pinned_version():
    assert runpod.__version__ == RUNPOD_VERSION


def test_job_scaler_takes_its_per_job_function_from_the_module_global():
    init = inspect.getsource(rp_scale.JobScaler.__init__)
    assert "self.jobs_handler = handle_job" in init
    assert "await self.jobs_handler(session, self.config, job)" in inspect.getsource(rp_scale.JobScaler.handle_job)
    assert params(rp_scale.handle_job) == ["session", "config", "job"]


def test_sdk_building_blocks_keep_their_signatures():
    assert params(rp_job.run_job) == ["handler", "job"]
    assert params(rp_job.run_job_generator) == ["handler", "job"]
    assert params(rp_http.send_result) == ["session", "job_data", "job", "is_stream"]
    assert params(rp_http.stream_result) == ["session", "job_data", "job"]
    # The SDK serializes bodies with json.dumps(..., ensure_ascii=False): body_bytes measures the same.
    assert "json.dumps(job_data, ensure_ascii=False)" in inspect.getsource(rp_http._handle_result)


def test_install_makes_the_job_scaler_use_the_adapter(monkeypatch):
    monkeypatch.setattr(rp_scale, "handle_job", rp_scale.handle_job)  # restored after the test
    adapter = QueueJobHandler(whole=_whole, stream=_stream)
    install(adapter)
    assert rp_scale.JobScaler({"handler": _whole}).jobs_handler is adapter


def test_sdk_run_job_turns_a_returned_error_into_a_failed_result():
    assert asyncio.run(rp_job.run_job(_whole, {"id": "a", "input": {}})) == {"output": {"text": "hi", "audio": [0.5]}}
    assert asyncio.run(rp_job.run_job(_failing, {"id": "b", "input": {}})) == {"error": "message: bad"}


async def _whole(job):
    return {"text": "hi", "audio": [0.5]}


async def _failing(job):
    return {"error": "message: bad"}


async def _stream(job: Job):  # as JobRunner.stream: chunks, and a failure as a last JobFailure
    for i in range(job.input.get("chunks", 2)):
        if job.input.get("fail_at") == i:
            yield JobFailure(ErrorKind.INTERNAL, "internal error: boom")
            return
        yield {"text": f"S{i}.", "audio": [0.0] * job.input.get("samples", 3), "duration_s": 0.5, "seed": 9}


def record(handler: QueueJobHandler, job: dict) -> tuple[list, list]:
    streamed, done = [], []

    async def post_stream(body):
        streamed.append(body)

    async def post_done(body, is_stream):
        done.append((body, is_stream))

    asyncio.run(handler.process(job, post_stream, post_done))
    return streamed, done


ADAPTER = QueueJobHandler(whole=_whole, stream=_stream)


def test_plain_job_is_one_done_post_with_the_result_object():
    streamed, done = record(ADAPTER, {"id": "p", "input": {"message": "x"}})
    assert streamed == [] and done == [({"output": {"text": "hi", "audio": [0.5]}}, False)]


def test_streamed_job_posts_chunks_then_a_summary_without_audio():
    streamed, done = record(ADAPTER, {"id": "s", "input": {"stream": True}})
    assert [b["output"]["text"] for b in streamed] == ["S0.", "S1."]
    assert done == [({"output": {"text": "S0. S1.", "duration_s": 1.0, "chunks": 2, "seed": 9}}, True)]


def test_error_chunk_ends_the_streamed_job_and_is_never_streamed():
    streamed, done = record(ADAPTER, {"id": "e", "input": {"stream": True, "fail_at": 1}})
    assert len(streamed) == 1 and done == [({"error": "internal error: boom"}, True)]


def test_a_chunk_over_one_megabyte_fails_the_job_instead_of_being_posted():
    streamed, done = record(ADAPTER, {"id": "big", "input": {"stream": True, "samples": 300_000}})
    assert streamed == [] and "over 1 MB" in done[0][0]["error"]


def test_a_result_over_the_limit_is_an_error_not_a_rejected_post():
    small = QueueJobHandler(whole=_whole, stream=_stream, result_limit_bytes=20)
    _, done = record(small, {"id": "p", "input": {}})
    assert "over RunPod's" in done[0][0]["error"]


@pytest.mark.parametrize(
    "job_input, expected",
    [
        ({"message": "x"}, {"output": {"text": "hi", "audio": [0.5]}}),
        (
            {"stream": True, "chunks": 1},
            {
                "output": {"text": "S0.", "duration_s": 0.5, "chunks": 1, "seed": 9},
                "stream": [{"output": {"text": "S0.", "audio": [0.0] * 3, "duration_s": 0.5, "seed": 9}}],
            },
        ),
    ],
)
def test_local_run_shows_what_the_platform_stores(job_input, expected):
    assert asyncio.run(run_local(ADAPTER, {"input": job_input})) == expected


def test_body_bytes_is_the_utf8_json_size():
    assert body_bytes({"output": "é"}) == len('{"output": "é"}'.encode())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_many_concurrent_jobs_in_random_order_each_end_once_with_their_own_chunks(seed):
    rng = random.Random(seed)

    async def whole(job: Job):
        await asyncio.sleep(rng.random() / 100)
        if job.input["fail"]:
            raise RuntimeError("boom")  # the SDK's run_job turns it into an error result
        return {"text": job.id, "audio": [0.1]}

    async def stream(job: Job):
        for i in range(job.input["chunks"]):
            await asyncio.sleep(rng.random() / 100)
            if job.input["fail"] and i == 1:
                yield JobFailure(ErrorKind.INTERNAL, f"failed {job.id}")
                return
            yield {"text": f"{job.id}:{i}", "audio": [0.0], "duration_s": 0.25, "seed": 1}

    adapter = QueueJobHandler(whole=whole, stream=stream)
    jobs = [
        {
            "id": f"j{n}",
            "input": {"stream": rng.random() < 0.5, "fail": rng.random() < 0.2, "chunks": rng.randint(2, 5)},
        }
        for n in range(60)
    ]
    posts: dict[str, list] = {job["id"]: [] for job in jobs}

    async def run_one(job):
        async def post_stream(body):
            posts[job["id"]].append(("stream", body))

        async def post_done(body, is_stream):
            posts[job["id"]].append(("done", body))

        await adapter.process(job, post_stream, post_done)

    async def run_all():
        await asyncio.gather(*(run_one(job) for job in jobs))

    asyncio.run(run_all())
    for job in jobs:
        kinds = [kind for kind, _ in posts[job["id"]]]
        assert kinds.count("done") == 1 and kinds[-1] == "done", job  # exactly one end, and last
        done = posts[job["id"]][-1][1]
        chunks = [body["output"] for kind, body in posts[job["id"]] if kind == "stream"]
        assert all(c["text"].startswith(job["id"] + ":") for c in chunks)  # never another job's chunk
        if job["input"]["fail"]:
            assert "error" in done and (len(chunks) == (1 if job["input"]["stream"] else 0))
        elif job["input"]["stream"]:
            assert done == {
                "output": {
                    "text": " ".join(c["text"] for c in chunks),
                    "chunks": job["input"]["chunks"],
                    "duration_s": 0.25 * job["input"]["chunks"],
                    "seed": 1,
                }
            }
        else:
            assert done == {"output": {"text": job["id"], "audio": [0.1]}} and chunks == []


def test_the_platform_job_dict_becomes_a_typed_job_once_at_the_door():
    job = Job.from_runpod({"id": "x", "input": {"stream": True}, "webhook": "https://example.com/hook"})
    assert (job.id, job.input, job.tenant, job.result_route, job.streamed) == ("x", {"stream": True}, None, "run", True)
    assert not Job.from_runpod({"id": "y", "input": {"stream": "true"}}).streamed  # only JSON true streams
    assert not Job("z", "not an object").streamed
    # The SDK's own modes (--rp_serve_api) call `result` with the platform's dict: an async function.
    assert inspect.iscoroutinefunction(ADAPTER.result)
    assert asyncio.run(ADAPTER.result({"id": "w", "input": {}})) == {"text": "hi", "audio": [0.5]}
