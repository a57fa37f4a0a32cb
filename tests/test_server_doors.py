"""The self-hosted server's three doors, in process through httpx's ASGI transport, with and without auth."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import pytest

from fish_worker.server import ServerSettings, create_app
from test_audio_formats import decode_ffmpeg

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB = {"message": "Hello there. How are you?", "max_tokens": 6, "seed": 1}


@pytest.fixture(scope="module")
def app(runner):
    return create_app(runner, ServerSettings(api_keys=f"other-key, {KEY}"))


def call(app, method, url, **kwargs):
    """One request against the app, on a fresh event loop (background jobs live in that loop)."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def scenario(app, steps):
    """Several requests in one event loop, so /v2 jobs started by one are seen by the next."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await steps(client)

    return asyncio.run(go())


# ---- auth, all doors ----------------------------------------------------------------------------

DOORS = [
    ("POST", "/run", {"input": JOB}),
    ("POST", "/v2/ep/runsync", {"input": JOB}),
    ("GET", "/v2/ep/health", None),
    ("POST", "/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "alloy", "max_tokens": 4}),
]


@pytest.mark.parametrize("method, url, body", DOORS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_every_door_refuses_a_missing_or_wrong_key(app, method, url, body, headers):
    response = call(app, method, url, json=body, headers=headers)
    assert response.status_code == 401
    error = response.json()
    if url.startswith("/v1"):
        assert error["error"]["type"] == "authentication_error"
    elif url.startswith("/v2"):
        assert "API key" in error["error"]
    else:
        assert error["status"] == "error" and "API key" in error["error"] and "id" in error


def test_auth_is_off_only_when_disabled_explicitly(runner):
    assert call(create_app(runner, ServerSettings(api_keys="")), "GET", "/v2/ep/health").status_code == 401
    open_app = create_app(runner, ServerSettings(auth_disabled=True))
    assert call(open_app, "GET", "/v2/ep/health").status_code == 200
    assert call(open_app, "POST", "/run", json={"input": JOB}).status_code == 200


def test_openapi_schema_is_served_with_bearer_auth(app):
    schema = call(app, "GET", "/openapi.json").json()
    assert {"/run", "/v2/{endpoint_id}/runsync", "/v1/audio/speech"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ---- seed door ----------------------------------------------------------------------------------


def test_seed_run_answers_id_status_output(app, runner):
    response = call(app, "POST", "/run", json={"input": JOB}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"id", "status", "output"} and body["status"] == "success"
    assert body["output"]["text"] == JOB["message"] and len(body["output"]["audio"]) > 0
    from test_handler import run_job
    assert body["output"]["audio"] == run_job(runner, JOB)[0]["audio"]  # the same runner, same result


def test_seed_stream_is_one_json_object_per_line(app):
    response = call(app, "POST", "/run", json={"input": {**JOB, "stream": True}}, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.strip().split("\n")
    objects = [json.loads(line) for line in lines]
    assert [o["status"] for o in objects] == ["success", "success"]
    assert [o["output"]["text"] for o in objects] == ["Hello there.", "How are you?"]
    assert len({o["id"] for o in objects}) == 1


@pytest.mark.parametrize("job_input, field", [
    ({"message": ""}, "message"),
    ({"message": "Hi", "temperature": "hot"}, "temperature"),
    ({"message": "Hi", "voice_id": "nobody"}, "voice_id"),
    ({"message": "Hi", "stream": True, "audio_format": "aac"}, "audio_format"),
])
def test_seed_bad_input_is_400_with_the_field(app, job_input, field):
    response = call(app, "POST", "/run", json={"input": job_input}, headers=AUTH)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error" and body["error"].startswith(f"{field}:") and body["id"]


def test_seed_malformed_body_is_400(app):
    response = call(app, "POST", "/run", content=b"not json", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["status"] == "error"
    assert call(app, "POST", "/run", json={"message": "no input wrapper"}, headers=AUTH).status_code == 400


def test_seed_server_fault_is_500(app, runner, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("GPU fell off")

    monkeypatch.setattr(runner.service, "synthesize", broken)
    response = call(app, "POST", "/run", json={"input": JOB}, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"] == "internal error: RuntimeError: GPU fell off"


def test_seed_voice_actions_go_through_the_same_runner(app):
    from conftest import wav_b64
    save = {"action": "save_voice", "voice_id": "door-voice", "reference_audio": wav_b64(1.0)}
    assert call(app, "POST", "/run", json={"input": save}, headers=AUTH).json()["output"]["voice"]["voice_id"] \
        == "door-voice"
    response = call(app, "POST", "/run", json={"input": {**JOB, "voice_id": "door-voice"}}, headers=AUTH)
    assert response.status_code == 200


# ---- RunPod door --------------------------------------------------------------------------------


def test_runpod_run_status_stream_and_health(app):
    async def steps(client):
        queued = (await client.post("/v2/ep/run", json={"input": {**JOB, "stream": True}}, headers=AUTH)).json()
        assert queued["status"] == "IN_QUEUE"
        streamed = []
        for _ in range(200):
            polled = (await client.get(f"/v2/ep/stream/{queued['id']}", headers=AUTH)).json()
            streamed += [part["output"] for part in polled["stream"]]
            if polled["status"] == "COMPLETED":
                break
        status = (await client.get(f"/v2/ep/status/{queued['id']}", headers=AUTH)).json()
        health = (await client.get("/v2/ep/health", headers=AUTH)).json()
        return streamed, status, health

    streamed, status, health = scenario(app, steps)
    assert [c["text"] for c in streamed] == ["Hello there.", "How are you?"]
    assert status["status"] == "COMPLETED" and status["output"]["chunks"] == len(streamed)  # a summary, no audio
    assert status["output"]["text"] == JOB["message"] and "audio" not in status["output"]
    assert status["executionTime"] >= 0 and status["delayTime"] >= 0
    assert health["jobs"]["completed"] >= 1 and health["workers"]["idle"] == 4  # FISH_MAX_CONCURRENCY slots, none busy


def test_runpod_runsync_and_failures(app):
    async def steps(client):
        done = (await client.post("/v2/ep/runsync", json={"input": JOB}, headers=AUTH)).json()
        failed = (await client.post("/v2/ep/runsync", json={"input": {"message": ""}}, headers=AUTH)).json()
        missing = await client.get("/v2/ep/status/no-such-job", headers=AUTH)
        return done, failed, missing

    done, failed, missing = scenario(app, steps)
    assert done["status"] == "COMPLETED" and done["output"]["text"] == JOB["message"]
    assert failed["status"] == "FAILED" and failed["error"].startswith("message:")
    assert missing.status_code == 404


def synthesis_threads():
    return [t for t in threading.enumerate() if t.name == "synthesis"]


def test_runpod_cancel_stops_a_running_generation(app):
    long_job = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}

    async def steps(client):
        job = (await client.post("/v2/ep/run", json={"input": long_job}, headers=AUTH)).json()
        for _ in range(100):
            polled = (await client.get(f"/v2/ep/stream/{job['id']}", headers=AUTH)).json()
            if polled["stream"]:
                break
        assert polled["status"] == "IN_PROGRESS" and synthesis_threads()
        cancelled = (await client.post(f"/v2/ep/cancel/{job['id']}", headers=AUTH)).json()
        started = time.monotonic()
        while synthesis_threads() and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        status = (await client.get(f"/v2/ep/status/{job['id']}", headers=AUTH)).json()
        return cancelled, status, time.monotonic() - started

    cancelled, status, stop_s = scenario(app, steps)
    assert cancelled["status"] == "CANCELLED" and status["status"] == "CANCELLED" and "output" not in status
    assert not synthesis_threads() and stop_s < 5  # the generation thread ended, well before 40 sentences


# ---- OpenAI door --------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format, rate", [("mp3", 44100), ("wav", 44100), ("opus", 48000)])
def test_openai_speech_returns_one_audio_file(app, response_format, rate):
    body = {"model": "tts-1", "input": "Hello there. How are you?", "voice": "alloy",
            "response_format": response_format, "max_tokens": 8}
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("audio/")
    samples, decoded_rate = decode_ffmpeg(response.content)
    assert decoded_rate == rate and len(samples) > 0.1 * rate


def test_openai_speech_sse_and_saved_voice(app):
    from conftest import wav_b64
    call(app, "POST", "/run", headers=AUTH,
         json={"input": {"action": "save_voice", "voice_id": "narrator", "reference_audio": wav_b64(1.0)}})
    body = {"model": "tts-1", "input": "Hi there.", "voice": "narrator", "response_format": "pcm",
            "stream_format": "sse", "max_tokens": 6}
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    events = [json.loads(line[len("data: "):]) for line in response.text.split("\n\n") if line]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) > 0 and len(pcm) % 2 == 0


@pytest.mark.parametrize("body, param", [
    ({"input": "Hi.", "voice": "nobody"}, "voice"),
    ({"input": "Hi.", "voice": "alloy", "response_format": "aac"}, "response_format"),
    ({"input": "", "voice": "alloy"}, "input"),
    ({"voice": "alloy"}, "input"),
])
def test_openai_errors_have_openai_shape(app, body, param):
    response = call(app, "POST", "/v1/audio/speech", json={"model": "tts-1", **body}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
