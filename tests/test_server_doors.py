"""The self-hosted server's three doors, in process through httpx's ASGI transport, with and without auth."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import pytest

from fish_worker.server import create_app
from fish_worker.settings import ServerSettings
from fish_worker.server.dependencies import limiter_of, registry_of
from helpers import decode_ffmpeg, run_job, wav_b64

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB = {"message": "Hello there. How are you?", "max_tokens": 6, "seed": 1}


@pytest.fixture(scope="module")
def app(runner, app_settings):
    return create_app(runner, app_settings(api_keys=f"other-key, {KEY}"))


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
    ("POST", "/v1/tts", {"text": "Hi."}),
    ("GET", "/model", None),
]


@pytest.mark.parametrize("method, url, body", DOORS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_every_door_refuses_a_missing_or_wrong_key(app, method, url, body, headers):
    response = call(app, method, url, json=body, headers=headers)
    assert response.status_code == 401
    error = response.json()
    if url in ("/v1/tts", "/model"):  # Fish Audio's own shape
        assert error["status"] == 401 and "API key" in error["message"]
    elif url.startswith("/v1"):
        assert error["error"]["type"] == "authentication_error"
    elif url.startswith("/v2"):
        assert "API key" in error["error"]
    else:
        assert error["status"] == "error" and "API key" in error["error"] and "id" in error


@pytest.mark.parametrize("extensions", [{"websocket.http.response": {}}, {}])
def test_websockets_are_checked_before_the_handshake(extensions):
    from starlette.websockets import WebSocket

    from fish_worker.server.auth import AuthMiddleware, tenant_of

    seen = []

    async def app(scope, receive, send):  # stands for the router: records whose socket it got
        seen.append(tenant_of(WebSocket(scope, receive, send)))

    async def connect(headers):
        scope = {"type": "websocket", "path": "/v1/tts/live", "headers": headers, "extensions": extensions}
        sent = []

        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            sent.append(message)

        await AuthMiddleware(app, ServerSettings(api_keys="alice:key-a")).__call__(scope, receive, send)
        return sent

    refused = asyncio.run(connect([(b"authorization", b"Bearer wrong")]))
    if extensions:  # an HTTP 401 in the Fish door's shape, instead of the handshake
        assert refused[0]["type"] == "websocket.http.response.start" and refused[0]["status"] == 401
        assert json.loads(refused[1]["body"]) == {"status": 401, "message": "invalid API key"}
    else:  # a close before accepting, which servers answer with 403
        assert refused == [{"type": "websocket.close", "code": 1008, "reason": "invalid API key"}]
    assert seen == []
    assert asyncio.run(connect([(b"authorization", b"Bearer key-a")])) == [] and seen == ["alice"]


def test_auth_is_off_only_when_disabled_explicitly(runner, app_settings):
    assert call(create_app(runner, app_settings(api_keys="")), "GET", "/v2/ep/health").status_code == 401
    open_app = create_app(runner, app_settings(auth_disabled=True))
    assert call(open_app, "GET", "/v2/ep/health").status_code == 200
    assert call(open_app, "POST", "/run", json={"input": JOB}).status_code == 200


def test_docs_are_off_unless_enabled(app, runner, app_settings):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert call(app, "GET", path, headers=AUTH).status_code == 404
    docs_app = create_app(runner, app_settings(api_keys=KEY, enable_docs=True))
    assert call(docs_app, "GET", "/docs").status_code == 200  # a browser page: no key to send
    schema = call(docs_app, "GET", "/openapi.json").json()
    assert {"/run", "/v2/{endpoint_id}/runsync", "/v1/audio/speech"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ---- seed door ----------------------------------------------------------------------------------


def test_seed_run_answers_id_status_output(app, runner):
    response = call(app, "POST", "/run", json={"input": JOB}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"id", "status", "output"} and body["status"] == "success"
    assert body["output"]["text"] == JOB["message"] and len(body["output"]["audio"]) > 0
    assert body["output"]["audio"] == run_job(runner, JOB)[0]["audio"]  # the same runner, same result


def test_seed_stream_is_one_json_object_per_line(app):
    response = call(app, "POST", "/run", json={"input": {**JOB, "stream": True}}, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.strip().split("\n")
    objects = [json.loads(line) for line in lines]
    assert [o["status"] for o in objects] == ["success", "success"]
    assert [o["output"]["text"] for o in objects] == ["Hello there.", "How are you?"]
    assert len({o["id"] for o in objects}) == 1


@pytest.mark.parametrize(
    "job_input, field",
    [
        ({"message": ""}, "message"),
        ({"message": "Hi", "temperature": "hot"}, "temperature"),
        ({"message": "Hi", "stream": True, "audio_format": "wma"}, "audio_format"),
    ],
)
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
    save = {"action": "save_voice", "voice_id": "door-voice", "reference_audio": wav_b64(1.0)}
    assert (
        call(app, "POST", "/run", json={"input": save}, headers=AUTH).json()["output"]["voice"]["voice_id"]
        == "door-voice"
    )
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
    body = {
        "model": "tts-1",
        "input": "Hello there. How are you?",
        "voice": "alloy",
        "response_format": response_format,
        "max_tokens": 8,
    }
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("audio/")
    samples, decoded_rate = decode_ffmpeg(response.content)
    assert decoded_rate == rate and len(samples) > 0.1 * rate


def test_openai_speech_sse_and_saved_voice(app):
    call(
        app,
        "POST",
        "/run",
        headers=AUTH,
        json={"input": {"action": "save_voice", "voice_id": "narrator", "reference_audio": wav_b64(1.0)}},
    )
    body = {
        "model": "tts-1",
        "input": "Hi there.",
        "voice": "narrator",
        "response_format": "pcm",
        "stream_format": "sse",
        "max_tokens": 6,
    }
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    events = [json.loads(line[len("data: ") :]) for line in response.text.split("\n\n") if line]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) > 0 and len(pcm) % 2 == 0


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "Hi.", "voice": "nobody"}, "voice"),
        ({"input": "Hi.", "voice": "alloy", "response_format": "wma"}, "response_format"),
        ({"input": "", "voice": "alloy"}, "input"),
        ({"voice": "alloy"}, "input"),
    ],
)
def test_openai_errors_have_openai_shape(app, body, param):
    response = call(app, "POST", "/v1/audio/speech", json={"model": "tts-1", **body}, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


# ---- errors, health, limits ---------------------------------------------------------------------


def test_health_is_open_and_says_nothing_private(app):
    response = call(app, "GET", "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_errors_outside_the_doors_have_the_door_shape(app):
    missing = call(app, "GET", "/nowhere", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"id": None, "status": "error", "error": "no such path: GET /nowhere"}
    wrong_method = call(app, "GET", "/run", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["status"] == "error" and "use POST" in wrong_method.json()["error"]
    v1_missing = call(app, "GET", "/v1/models", headers=AUTH).json()
    assert v1_missing["error"]["type"] == "invalid_request_error" and "no such path" in v1_missing["error"]["message"]
    v2_missing = call(app, "GET", "/v2/ep/status/nope", headers=AUTH)
    assert v2_missing.status_code == 404 and v2_missing.json()["status"] == "error"


@pytest.mark.parametrize("url", ["/run", "/v2/ep/run"])
def test_malformed_json_is_a_readable_400(app, url):
    response = call(
        app, "POST", url, content=b'{"input": {"message": "Hi",}}', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "id": None,
        "status": "error",
        "error": "body: invalid JSON at character 27: Expecting property name enclosed in double quotes",
    }
    without_key = call(app, "POST", url, content=b"not json", headers={"Content-Type": "application/json"})
    assert without_key.status_code == 401  # the key is checked first: the body is never parsed


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": {"message": "hi \xff\xfe"}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"input": {"message": "hi", "seed": ' + b"9" * 5000 + b"}}",
    ],
    ids=["not-utf8", "nested-too-deep", "5000-digit-number"],
)
@pytest.mark.parametrize("url", ["/run", "/v1/audio/speech"])
def test_bodies_json_cannot_read_say_so(app, url, body):
    response = call(app, "POST", url, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    message = response.json()["error"]["message"] if url.startswith("/v1") else response.json()["error"]
    assert message.startswith("body: is not valid JSON"), message


def test_oversized_bodies_are_413_by_length_or_while_streaming(runner, app_settings):
    small = create_app(runner, app_settings(api_keys=KEY, max_body_bytes=1000))
    declared = call(small, "POST", "/run", content=b"x" * 1001, headers=AUTH)
    assert declared.status_code == 413 and "FISH_MAX_BODY_BYTES" in declared.json()["error"]
    assert declared.headers["connection"] == "close"

    async def chunks():  # no Content-Length: counted as it streams in
        for _ in range(50):
            yield b" " * 100

    streamed = call(small, "POST", "/run", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["status"] == "error"
    v1 = call(small, "POST", "/v1/audio/speech", content=b"x" * 2000, headers=AUTH)
    assert v1.status_code == 413 and v1.json()["error"]["type"] == "invalid_request_error"
    # The default fits the largest legal request: base64 of FISH_REFERENCE_MAX_BYTES and then some.
    assert ServerSettings().body_limit(16 << 20) > (16 << 20) * 4 // 3


def test_a_body_that_never_arrives_is_408(runner, app_settings):
    slow = create_app(runner, app_settings(api_keys=KEY, body_timeout_s=0.3))

    async def stalled():
        yield b'{"input": '
        await asyncio.sleep(5)
        yield b"{}}"

    started = time.monotonic()
    response = call(slow, "POST", "/run", content=stalled(), headers=AUTH)
    assert response.status_code == 408 and "FISH_BODY_TIMEOUT_S" in response.json()["error"]
    assert time.monotonic() - started < 3


# ---- whole files and streams -------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["wav", "flac", "mp3", "opus"])
def test_openai_whole_files_have_true_lengths(app, response_format):
    import io

    import av
    import soundfile as sf

    body = {
        "model": "tts-1",
        "input": "Hello there. How are you?",
        "voice": "alloy",
        "response_format": response_format,
        "max_tokens": 8,
        "seed": 3,
        "stream": False,
    }
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    assert response.status_code == 200 and int(response.headers["content-length"]) == len(response.content)
    info = sf.info(io.BytesIO(response.content))
    samples, _ = sf.read(io.BytesIO(response.content))
    with av.open(io.BytesIO(response.content)) as container:
        av_samples = sum(frame.samples for frame in container.decode(audio=0))
    assert 0 < info.frames == len(samples) == av_samples
    # The same clip as the seed door's whole result (same seed): same number of samples.
    seed = call(
        app,
        "POST",
        "/run",
        headers=AUTH,
        json={"input": {"message": body["input"], "max_tokens": 8, "seed": 3, "audio_format": "pcm16"}},
    ).json()["output"]
    rate = 48000 if response_format == "opus" else 44100
    assert info.samplerate == rate and abs(info.frames / rate - seed["duration_s"]) < 0.002


def test_openai_streams_by_default_with_a_length_unknown_header(app):
    import io

    import av

    body = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "flac", "max_tokens": 6}
    response = call(app, "POST", "/v1/audio/speech", json=body, headers=AUTH)
    assert response.status_code == 200 and "content-length" not in response.headers
    assert int.from_bytes(response.content[18:26], "big") & 0xFFFFFFFFF == 0  # STREAMINFO total samples: unknown
    with av.open(io.BytesIO(response.content)) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) > 0


# ---- tenants ------------------------------------------------------------------------------------

ALICE, BOB = {"Authorization": "Bearer key-of-alice"}, {"Authorization": "Bearer key-of-bob"}


@pytest.fixture(scope="module")
def tenants_app(runner, app_settings):
    return create_app(runner, app_settings(api_keys="alice:key-of-alice,bob:key-of-bob"))


def test_plain_and_named_keys_are_tenants():
    from fish_worker.settings import parse_api_keys

    keys = parse_api_keys("alice:K1, bob:K2, K3, alice:K4")
    assert keys["K1"] == keys["K4"] == "alice" and keys["K2"] == "bob" and keys["K3"].startswith("key-")
    assert parse_api_keys("K3") == {"K3": keys["K3"]}  # a plain key's tenant is stable
    with pytest.raises(ValueError, match="two tenants"):
        parse_api_keys("alice:K1,bob:K1")


def test_a_tenant_cannot_use_list_or_delete_anothers_voices(tenants_app):

    def action(headers, **job_input):
        return call(tenants_app, "POST", "/run", json={"input": job_input}, headers=headers)

    saved = action(ALICE, action="save_voice", voice_id="alices-voice", reference_audio=wav_b64(1.0))
    assert saved.status_code == 200
    assert [v["voice_id"] for v in action(ALICE, action="list_voices").json()["output"]["voices"]] == ["alices-voice"]
    assert action(BOB, action="list_voices").json()["output"]["voices"] == []
    for voice_id in ("alices-voice", "never-saved"):  # another's voice answers as one that never existed
        used = action(BOB, message="Hi.", voice_id=voice_id, max_tokens=4)
        assert used.status_code == 404 and used.json()["error"] == f"voice_id: no saved voice named {voice_id!r}"
        deleted = action(BOB, action="delete_voice", voice_id=voice_id)
        assert deleted.status_code == 404 and deleted.json()["error"] == f"voice_id: no saved voice named {voice_id!r}"
        speech = call(
            tenants_app,
            "POST",
            "/v1/audio/speech",
            headers=BOB,
            json={"model": "tts-1", "input": "Hi.", "voice": voice_id, "max_tokens": 4},
        )
        assert speech.status_code == 400 and speech.json()["error"]["param"] == "voice"
    assert action(ALICE, message="Hi.", voice_id="alices-voice", max_tokens=4).status_code == 200
    assert action(ALICE, action="delete_voice", voice_id="alices-voice").json()["output"] == {"deleted": "alices-voice"}


def test_a_tenant_cannot_continue_or_end_anothers_conversation(tenants_app, runner):
    def turn(headers, message):
        job = {"message": message, "conversation_id": "conv-1", "mode": "tts", "max_tokens": 4, "seed": 1}
        return call(tenants_app, "POST", "/run", json={"input": job}, headers=headers)

    def end(headers):
        job = {"action": "end_conversation", "conversation_id": "conv-1"}
        return call(tenants_app, "POST", "/run", json={"input": job}, headers=headers).json()["output"]["ended"]

    assert turn(ALICE, "Alice speaks first.").status_code == 200
    alices = runner.conversations.store.for_tenant("alice").get("conv-1")
    assert end(BOB) is False  # not Bob's to end: as if it never existed
    assert turn(BOB, "Bob speaks.").status_code == 200  # Bob's own conv-1, in his own namespace
    assert runner.conversations.store.for_tenant("alice").get("conv-1") == alices  # Alice's is untouched
    assert runner.conversations.store.for_tenant("bob").get("conv-1").voice.text == "Bob speaks."
    assert end(ALICE) is True and end(BOB) is True and end(ALICE) is False


def test_a_tenant_cannot_read_stream_cancel_or_purge_anothers_jobs(tenants_app):
    long_job = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}

    async def steps(client):
        running = (await client.post("/v2/ep/run", json={"input": long_job}, headers=ALICE)).json()
        queued = (await client.post("/v2/ep/run", json={"input": JOB}, headers=ALICE)).json()
        bob = {
            f"{verb} {name}": (await client.request(method, f"/v2/ep/{verb}/{job['id']}", headers=BOB))
            for verb, method in (("status", "GET"), ("stream", "GET"), ("cancel", "POST"))
            for name, job in (("running", running), ("queued", queued))
        }
        bob["purge"] = await client.post("/v2/ep/purge-queue", headers=BOB)
        bob["health"] = await client.get("/v2/ep/health", headers=BOB)
        alice_status = (await client.get(f"/v2/ep/status/{running['id']}", headers=ALICE)).json()
        await client.post(f"/v2/ep/cancel/{running['id']}", headers=ALICE)
        await client.post(f"/v2/ep/cancel/{queued['id']}", headers=ALICE)
        return bob, alice_status

    bob, alice_status = scenario(tenants_app, steps)
    for name in ("status", "stream", "cancel"):
        for which in ("running", "queued"):
            response = bob[f"{name} {which}"]
            assert response.status_code == 404 and response.json()["status"] == "error", (name, which)
    assert bob["purge"].json()["removed"] == 0
    assert bob["health"].json()["jobs"] == {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert alice_status["status"] in ("IN_QUEUE", "IN_PROGRESS")  # Bob's attempts changed nothing


def test_tenant_data_lives_apart_on_disk(tenants_app, settings):
    call(
        tenants_app,
        "POST",
        "/run",
        headers=BOB,
        json={"input": {"action": "save_voice", "voice_id": "bobs", "reference_audio": wav_b64(0.5)}},
    )
    assert (settings.storage.voices_dir / "tenants" / "bob" / "bobs.npz").is_file()
    assert not (settings.storage.voices_dir / "bobs.npz").exists()


# ---- bounds -------------------------------------------------------------------------------------


def test_too_many_jobs_get_429_with_retry_after(runner, app_settings):
    bounded = create_app(
        runner,
        app_settings(
            api_keys="alice:key-of-alice,bob:key-of-bob",
            max_concurrent_jobs=1,
            max_queued_jobs=3,
            max_queued_jobs_per_tenant=2,
            retry_after_s=7,
        ),
    )
    # Streamed: a whole float result this long would be refused at once as too large for /run.
    long_job = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}

    async def steps(client):
        out = {}
        alice = [(await client.post("/v2/ep/run", json={"input": long_job}, headers=ALICE)).json() for _ in range(2)]
        out["alice third"] = await client.post("/v2/ep/run", json={"input": long_job}, headers=ALICE)
        bob = (await client.post("/v2/ep/run", json={"input": long_job}, headers=BOB)).json()
        out["bob /v2"] = await client.post("/v2/ep/run", json={"input": JOB}, headers=BOB)
        out["bob /run"] = await client.post("/run", json={"input": JOB}, headers=BOB)
        out["bob /v1"] = await client.post(
            "/v1/audio/speech", headers=BOB, json={"model": "tts-1", "input": "Hi.", "voice": "alloy"}
        )
        for job, headers in [(alice[0], ALICE), (alice[1], ALICE), (bob, BOB)]:
            await client.post(f"/v2/ep/cancel/{job['id']}", headers=headers)
        await asyncio.sleep(0.1)  # the cancelled tasks end and give their places back
        out["after"] = await client.post("/run", json={"input": JOB}, headers=BOB)
        return out

    out = scenario(bounded, steps)
    for name in ("alice third", "bob /v2", "bob /run", "bob /v1"):
        assert out[name].status_code == 429 and out[name].headers["retry-after"] == "7", name
    assert "FISH_MAX_QUEUED_JOBS_PER_TENANT" in out["alice third"].json()["error"]
    assert "FISH_MAX_QUEUED_JOBS" in out["bob /run"].json()["error"] and out["bob /run"].json()["status"] == "error"
    assert out["bob /v1"].json()["error"]["type"] == "rate_limit_error"
    assert out["after"].status_code == 200


def test_stored_results_are_capped_oldest_first(runner, app_settings):
    capped = create_app(runner, app_settings(api_keys=KEY, max_stored_jobs=2))

    async def steps(client):
        ids = [(await client.post("/v2/ep/runsync", json={"input": JOB}, headers=AUTH)).json()["id"] for _ in range(3)]
        return [(await client.get(f"/v2/ep/status/{i}", headers=AUTH)).status_code for i in ids]

    assert scenario(capped, steps) == [404, 200, 200]
    registry = registry_of(capped)
    assert len(registry.jobs) == 2 and registry.stored_bytes > 0
    by_bytes = create_app(runner, app_settings(api_keys=KEY, max_stored_result_bytes=registry.stored_bytes))

    async def more(client):
        ids = [(await client.post("/v2/ep/runsync", json={"input": JOB}, headers=AUTH)).json()["id"] for _ in range(3)]
        return [(await client.get(f"/v2/ep/status/{i}", headers=AUTH)).status_code for i in ids]

    assert scenario(by_bytes, more) == [404, 200, 200]  # two results' bytes fit, the third pushes out the first


def test_a_tenant_flooding_the_store_pushes_out_its_own_results_first(runner, app_settings):
    """Past either cap, results go from the tenant holding the most: a quiet tenant's result stays."""

    async def alice_once_then_bob_four_times(client):
        alices = (await client.post("/v2/ep/runsync", json={"input": JOB}, headers=ALICE)).json()["id"]
        bobs = [(await client.post("/v2/ep/runsync", json={"input": JOB}, headers=BOB)).json()["id"] for _ in range(4)]
        return (
            (await client.get(f"/v2/ep/status/{alices}", headers=ALICE)).status_code,
            [(await client.get(f"/v2/ep/status/{i}", headers=BOB)).status_code for i in bobs],
        )

    tenants = "alice:key-of-alice,bob:key-of-bob"
    by_count = create_app(runner, app_settings(api_keys=tenants, max_stored_jobs=3))
    assert scenario(by_count, alice_once_then_bob_four_times) == (200, [404, 404, 200, 200])
    one_result = max(r.result_bytes for r in registry_of(by_count).jobs.values())  # the same job each time
    by_bytes = create_app(runner, app_settings(api_keys=tenants, max_stored_result_bytes=3 * one_result))
    assert scenario(by_bytes, alice_once_then_bob_four_times) == (200, [404, 404, 200, 200])


def test_a_tenants_jobs_in_flight_never_push_out_another_tenants_result(runner, app_settings):
    """The cap counts stored (finished) results: bob's burst, queued and running, is not one."""
    app = create_app(
        runner,
        app_settings(
            api_keys="alice:key-of-alice,bob:key-of-bob",
            max_stored_jobs=4,
            max_queued_jobs=8,
            max_queued_jobs_per_tenant=8,
        ),
    )

    async def alice_stored_then_bobs_burst(client):
        alices = (await client.post("/v2/ep/runsync", json={"input": JOB}, headers=ALICE)).json()["id"]
        bobs = [(await client.post("/v2/ep/run", json={"input": JOB}, headers=BOB)).json()["id"] for _ in range(6)]
        alice_during = []
        for _ in range(600):  # until bob's burst has finished (each check sees alice's result, or not)
            alice_during.append((await client.get(f"/v2/ep/status/{alices}", headers=ALICE)).status_code)
            if (
                all(r.status in ("COMPLETED", "FAILED") for r in registry_of(app).of_tenant("bob"))
                and len(registry_of(app).of_tenant("bob")) == 3
            ):
                break
            await asyncio.sleep(0.05)
        bob_after = [(await client.get(f"/v2/ep/status/{i}", headers=BOB)).status_code for i in bobs]
        return set(alice_during), bob_after

    alice_during, bob_after = scenario(app, alice_stored_then_bobs_burst)
    assert alice_during == {200}
    assert sorted(bob_after) == [200] * 3 + [404] * 3  # 7 results, 4 kept: bob's first three to finish went


@pytest.mark.timeout(240)
def test_stress_random_schedules_every_job_ends_and_every_place_is_given_back(runner, app_settings):
    import random

    stressed = create_app(
        runner,
        app_settings(
            api_keys="alice:key-of-alice,bob:key-of-bob,carol:key-of-carol",
            max_queued_jobs=6,
            max_queued_jobs_per_tenant=3,
            max_stored_jobs=10,
        ),
    )
    who = [ALICE, BOB, {"Authorization": "Bearer key-of-carol"}]
    statuses = []

    async def one(client, rng):
        await asyncio.sleep(rng.random() * 0.5)
        headers = rng.choice(who)
        job = {"message": "Hi there. Bye.", "max_tokens": rng.randint(2, 6), "seed": rng.randint(0, 9)}
        kind = rng.choice(["run", "stream", "v2", "v2-cancel", "v1"])
        if kind in ("run", "stream"):
            response = await client.post("/run", json={"input": {**job, "stream": kind == "stream"}}, headers=headers)
        elif kind == "v1":
            response = await client.post(
                "/v1/audio/speech",
                headers=headers,
                json={"model": "tts-1", "input": job["message"], "voice": "alloy", "max_tokens": 4},
            )
        else:
            response = await client.post("/v2/ep/run", json={"input": job}, headers=headers)
            if response.status_code == 200:
                job_id = response.json()["id"]
                if kind == "v2-cancel":
                    await asyncio.sleep(rng.random() * 0.3)
                    await client.post(f"/v2/ep/cancel/{job_id}", headers=headers)
                for _ in range(600):
                    polled = await client.get(f"/v2/ep/status/{job_id}", headers=headers)
                    if polled.status_code == 404 or polled.json()["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail(f"job {job_id} never ended")
        statuses.append(response.status_code)

    async def steps(client):
        rng = random.Random(11)
        await asyncio.gather(*(one(client, random.Random(rng.random())) for _ in range(40)))
        await asyncio.sleep(0.1)

    scenario(stressed, steps)
    gate, registry = limiter_of(stressed), registry_of(stressed)
    assert set(statuses) <= {200, 429} and statuses.count(200) > 0
    assert gate.admitted == 0 and not gate._per_tenant and gate.running == 0  # every place given back
    assert all(r.status in ("COMPLETED", "FAILED", "CANCELLED") for r in registry.jobs.values())
    assert len(registry.jobs) <= 10
