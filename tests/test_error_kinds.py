"""Errors carry a kind, and every door answers a kind with its status, whatever the message says."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fish_worker.audio.formats import ResultTooLargeError
from fish_worker.conversations import ConversationStoreError
from fish_worker.errors import ErrorKind, JobFailure, JobInputError, NotFoundError, WorkerError
from fish_worker.jobs.job import Job
from fish_worker.jobs.runpod_adapter import runpod_chunks
from fish_worker.server import create_app
from fish_worker.server.errors import STATUS_OF_KIND
from fish_worker.server.dependencies import limiter_of, registry_of

JOB = {"message": "Hello there.", "max_tokens": 4, "seed": 1}
SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "max_tokens": 4}
FISH = {"text": "Hello there.", "max_new_tokens": 4}
# A message that would have fooled the old prefix matching: only the kind may decide the status.
MISLEADING = "internal error: voice_id: no saved voice, says the text; the kind decides"

EXPECTED_STATUS = {
    ErrorKind.BAD_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.BUSY: 429,
    ErrorKind.UNAVAILABLE: 500,
    ErrorKind.INTERNAL: 500,
}


@pytest.fixture(scope="module")
def app(runner, app_settings):
    return create_app(runner, app_settings(auth_disabled=True))


def call(app, method, url, **kwargs):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_every_kind_has_a_status():
    assert STATUS_OF_KIND == EXPECTED_STATUS


def test_errors_say_their_kind_and_field():
    assert JobInputError("temperature", "too hot").kind is ErrorKind.BAD_INPUT
    assert JobInputError("temperature", "too hot").field == "temperature"
    assert NotFoundError("voice_id", "no saved voice named 'x'").kind is ErrorKind.NOT_FOUND
    assert ResultTooLargeError(11 << 20, 10 << 20, "run").kind is ErrorKind.TOO_LARGE
    assert ConversationStoreError("conversation store unavailable: down").kind is ErrorKind.UNAVAILABLE
    assert WorkerError("boom").kind is ErrorKind.INTERNAL


# ---- the job runner's typed layer ----------------------------------------------------------------


def events(runner, job_input):
    async def go():
        return [e async for e in runner.stream(Job(id="kinds", input=job_input))]

    return asyncio.run(go())


@pytest.mark.parametrize(
    "job_input, kind, field",
    [
        ({**JOB, "temperature": 5.0}, ErrorKind.BAD_INPUT, "temperature"),
        ({**JOB, "voice_id": "never-saved"}, ErrorKind.NOT_FOUND, "voice_id"),
        ({"action": "delete_voice", "voice_id": "never-saved"}, ErrorKind.NOT_FOUND, "voice_id"),
        ({"message": "word " * 390, "max_tokens": 2000, "audio_format": "float"}, ErrorKind.TOO_LARGE, None),
    ],
)
def test_runner_events_end_with_a_typed_failure(runner, job_input, kind, field):
    failure = events(runner, job_input)[-1]
    assert isinstance(failure, JobFailure) and (failure.kind, failure.field) == (kind, field)
    # RunPod's shape of the same failure: the message as {"error": ...}.
    assert runner_run(runner, job_input)[-1] == {"error": failure.message}


def runner_run(runner, job_input):
    async def go():
        return [c async for c in runpod_chunks(runner.stream(Job(id="kinds", input=job_input)))]

    return asyncio.run(go())


def test_a_fault_of_ours_is_an_internal_failure(runner, monkeypatch):
    monkeypatch.setattr(runner.service, "synthesize", _raises(RuntimeError("engine on fire")))
    failure = events(runner, JOB)[-1]
    assert failure == JobFailure(ErrorKind.INTERNAL, "internal error: RuntimeError: engine on fire")


# ---- every door maps the kind --------------------------------------------------------------------


def _raises(exc):
    def synthesize(*args, **kwargs):
        raise exc
        yield  # a generator, as the service's is

    return synthesize


def seed_status(app):
    response = call(app, "POST", "/run", json={"input": JOB})
    return response.status_code, response.json()["error"]


def openai_status(app):
    response = call(app, "POST", "/v1/audio/speech", json=SPEECH)
    return response.status_code, response.json()["error"]["message"]


def fish_status(app):
    response = call(app, "POST", "/v1/tts", json=FISH)
    return response.status_code, response.json()["message"]


@pytest.mark.parametrize("door", [seed_status, openai_status, fish_status])
@pytest.mark.parametrize("kind", list(ErrorKind))
def test_each_door_answers_a_kind_with_its_status(app, runner, monkeypatch, door, kind):
    monkeypatch.setattr(runner.service, "synthesize", _raises(WorkerError(MISLEADING, kind=kind)))
    status, message = door(app)
    assert (status, message) == (EXPECTED_STATUS[kind], MISLEADING)


@pytest.mark.parametrize("kind", [ErrorKind.BAD_INPUT, ErrorKind.NOT_FOUND, ErrorKind.INTERNAL])
def test_runpod_door_keeps_the_kind_of_a_failed_job(app, runner, monkeypatch, kind):
    monkeypatch.setattr(runner.service, "synthesize", _raises(WorkerError(MISLEADING, kind=kind)))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answer = (await client.post("/v2/ep/runsync", json={"input": JOB})).json()
            return answer, registry_of(app).get(answer["id"])

    answer, record = asyncio.run(go())
    assert answer["status"] == "FAILED" and answer["error"] == MISLEADING
    assert record.error_kind is kind


def test_unknown_saved_voice_is_404_on_the_job_and_fish_doors(app):
    seed = call(app, "POST", "/run", json={"input": {**JOB, "voice_id": "never-saved"}})
    assert seed.status_code == 404 and seed.json()["error"] == "voice_id: no saved voice named 'never-saved'"
    fish = call(app, "POST", "/v1/tts", json={**FISH, "reference_id": "never-saved"})
    assert fish.status_code == 404 and fish.json()["message"].startswith("reference_id: no saved voice")


def test_bad_input_is_400_naming_the_field_in_the_doors_words(app):
    seed = call(app, "POST", "/run", json={"input": {**JOB, "max_tokens": 10**9}})
    assert seed.status_code == 400 and seed.json()["error"].startswith("max_tokens: must be at most")
    openai = call(app, "POST", "/v1/audio/speech", json={**SPEECH, "input": "x" * 10**6})
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "input"
    assert openai.json()["error"]["message"].startswith("input: is 1000000 characters")
    fish = call(app, "POST", "/v1/tts", json={**FISH, "max_new_tokens": -3})
    assert fish.status_code == 400


@pytest.mark.parametrize("door", [seed_status, openai_status, fish_status])
def test_a_full_server_is_429_on_every_door(app, door):
    limiter = limiter_of(app)
    limiter.admitted += limiter.max_queued_jobs  # as if that many jobs were waiting
    try:
        status, message = door(app)
    finally:
        limiter.admitted -= limiter.max_queued_jobs
    assert status == 429 and message.startswith("server busy")
