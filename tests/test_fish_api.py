"""The official Fish Audio client (`fish-audio-sdk`, unmodified) against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import queue
import threading
import time
import wave

import httpx
import numpy as np
import ormsgpack
import pytest
from fishaudio import AsyncFishAudio, FishAudio
from fishaudio.exceptions import APIError, AuthenticationError, NotFoundError, RateLimitError, WebSocketError
from fishaudio.types import FlushEvent, Prosody, ReferenceAudio, TTSConfig
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, connect_ws

from fish_worker.server import create_app
from fish_worker.server.dependencies import limiter_of
from helpers import decode_ffmpeg, serve_app, wav_b64

KEY = "fish-test-key"
MAX_FRAMES = 6  # codec frames per sentence: keeps each synthesis short on the tiny checkpoint
CONFIG = TTSConfig(max_new_tokens=MAX_FRAMES, format="wav")

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def serving(app, **options):
    """`app` on a real uvicorn on 127.0.0.1 (a free port); yields its base URL."""
    with serve_app(app, **options) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def fish_app(runner, app_settings):
    return create_app(runner, app_settings(api_keys=KEY))


@pytest.fixture(scope="module")
def base_url(fish_app):
    with serving(fish_app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with FishAudio(api_key=KEY, base_url=base_url) as fish:
        yield fish


@pytest.fixture(scope="module")
def samples_per_frame(service):
    return service.codec.samples_per_frame


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    # A streamed WAV's sizes say "unknown" (0xFFFFFFFF); Python's wave reads to the end of the data.
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def test_convert_wav_has_the_frames_of_each_sentence(client, samples_per_frame):
    audio = client.tts.convert(text="Hello there. How are you?", config=CONFIG)
    samples, rate = read_wav(audio)
    assert rate == 44100
    frames, rest = divmod(len(samples), samples_per_frame)
    assert rest == 0 and 2 <= frames <= 2 * MAX_FRAMES  # two sentences, at most MAX_FRAMES frames each


@pytest.mark.parametrize(
    "fmt, rate, expected_rate",
    [
        ("pcm", 16000, 16000),
        ("wav", 8000, 8000),
        ("mp3", 24000, 24000),
        ("opus", None, 48000),
    ],
)
def test_stream_formats_and_sample_rates(client, samples_per_frame, fmt, rate, expected_rate):
    config = TTSConfig(max_new_tokens=MAX_FRAMES, format=fmt, sample_rate=rate)
    chunks = list(client.tts.stream(text="Hello there.", config=config))
    data = b"".join(chunks)
    if fmt == "pcm":
        assert len(data) % 2 == 0
        samples = np.frombuffer(data, "<i2")
    elif fmt == "wav":
        samples, got_rate = read_wav(data)
        assert got_rate == expected_rate
    else:
        samples, got_rate = decode_ffmpeg(data)
        assert got_rate == expected_rate
    # Duration in whole codec frames (44.1 kHz), give or take resampler and encoder padding.
    seconds = len(samples) / expected_rate
    frame_s = samples_per_frame / 44100
    assert 1 * frame_s - 0.01 <= seconds <= MAX_FRAMES * frame_s + 0.1, (fmt, seconds)


def test_prosody_speed_shortens_and_volume_scales(client, samples_per_frame):
    base = TTSConfig(max_new_tokens=MAX_FRAMES, format="pcm")
    # Same voice and text, but sampling differs between requests: compare against the expected ratio
    # only loosely; the sample counts are exact multiples of the frames generated.
    fast = np.frombuffer(client.tts.convert(text="Hello there.", config=base, speed=2.0), "<i2")
    quiet = np.frombuffer(
        client.tts.convert(text="Hello there.", config=base.model_copy(update={"prosody": Prosody(volume=-20)})), "<i2"
    )
    normal = np.frombuffer(client.tts.convert(text="Hello there.", config=base), "<i2")
    frame = samples_per_frame / 44100
    assert len(fast) / 44100 <= MAX_FRAMES * frame / 2 + 0.05
    assert len(normal) > 0 and len(quiet) > 0
    assert np.abs(quiet).max() <= 0.2 * 32768  # -20 dB of audio that cannot exceed full scale


def test_async_convert_and_stream(base_url):
    async def go():
        async with AsyncFishAudio(api_key=KEY, base_url=base_url) as fish:
            whole = await fish.tts.convert(text="Good morning.", config=CONFIG)
            stream = await fish.tts.stream(text="Good morning.", config=CONFIG)
            streamed = await stream.collect()
            return whole, streamed

    whole, streamed = asyncio.run(go())
    for data in (whole, streamed):
        samples, rate = read_wav(data)
        assert rate == 44100 and len(samples) > 0


def test_references_clone_a_voice_inline(client):
    clip = base64.b64decode(wav_b64(seconds=1.0))
    audio = client.tts.convert(
        text="Hello.", config=CONFIG, references=[ReferenceAudio(audio=clip, text="A reference.")]
    )
    assert len(read_wav(audio)[0]) > 0


def test_voices_create_list_get_use_delete(client):
    clip = base64.b64decode(wav_b64(seconds=1.0))
    voice = client.voices.create(title="Test voice", voices=[clip], texts=["A reference."])
    assert voice.title == "Test voice" and voice.state == "trained"
    assert voice.id in [v.id for v in client.voices.list(page_size=100).items]
    assert client.voices.get(voice.id).samples[0].text == "A reference."
    audio = client.tts.convert(text="Hello.", config=CONFIG, reference_id=voice.id)
    assert len(read_wav(audio)[0]) > 0
    client.voices.delete(voice.id)
    with pytest.raises(NotFoundError):
        client.voices.get(voice.id)
    with pytest.raises(NotFoundError) as err:  # as for an id never saved
        client.tts.convert(text="Hello.", config=CONFIG, reference_id=voice.id)
    assert err.value.status == 404 and "reference_id" in err.value.message


def test_websocket_text_generator_sync(client, samples_per_frame):
    def words():
        for piece in ["Hello", " there", ". How", " are", " you", "?"]:
            yield piece

    chunks = list(client.tts.stream_websocket(words(), config=CONFIG))
    samples, rate = read_wav(b"".join(chunks))
    assert rate == 44100 and len(samples) % samples_per_frame == 0
    assert 2 * samples_per_frame <= len(samples) <= 2 * MAX_FRAMES * samples_per_frame


def test_websocket_async_with_flush_and_mp3(base_url):
    async def text():
        yield "Hello"
        yield FlushEvent()  # spoken now, though the sentence has not ended
        yield " again, my friend"

    async def go():
        async with AsyncFishAudio(api_key=KEY, base_url=base_url) as fish:
            config = TTSConfig(max_new_tokens=MAX_FRAMES, format="mp3", sample_rate=16000)
            return [c async for c in fish.tts.stream_websocket(text(), config=config)]

    samples, rate = decode_ffmpeg(b"".join(asyncio.run(go())))
    assert rate == 16000 and len(samples) > 0


def test_websocket_sentence_is_spoken_before_the_text_ends(base_url):
    """Raw protocol: audio for the first sentence arrives while the client is still 'typing'."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            request = {"text": "", "format": "pcm", "max_new_tokens": MAX_FRAMES}
            ws.send_bytes(ormsgpack.packb({"event": "start", "request": request}))
            ws.send_bytes(ormsgpack.packb({"event": "text", "text": "First sentence. Sec"}))
            event = ormsgpack.unpackb(ws.receive_bytes(timeout=60))
            assert event["event"] == "audio" and event["text"] == "First sentence." and event["index"] == 0
            ws.send_bytes(ormsgpack.packb({"event": "text", "text": "ond one."}))
            ws.send_bytes(ormsgpack.packb({"event": "stop"}))
            texts = []
            while (event := ormsgpack.unpackb(ws.receive_bytes(timeout=60)))["event"] == "audio":
                texts.append(event.get("text"))
            assert event == {"event": "finish", "reason": "stop"} and "Second one." in texts


def test_websocket_close_stops_generation(base_url, runner, monkeypatch):
    """Closing the socket mid-sentence ends the synthesis thread promptly."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            request = {
                "text": "A long sentence that keeps the engine busy for a while.",
                "format": "pcm",
                "max_new_tokens": 2000,
            }
            ws.send_bytes(ormsgpack.packb({"event": "start", "request": request}))
            ws.send_bytes(ormsgpack.packb({"event": "flush"}))
            assert ormsgpack.unpackb(ws.receive_bytes(timeout=60))["event"] == "audio"
    deadline = time.monotonic() + 10
    while any(t.name == "synthesis" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "synthesis" for t in threading.enumerate())


def test_bad_input_and_keys(base_url, client):
    with pytest.raises(AuthenticationError):
        FishAudio(api_key="wrong", base_url=base_url).tts.convert(text="Hello.")
    with pytest.raises(APIError) as err:
        client.tts.convert(text="   ", config=CONFIG)
    assert err.value.status == 400 and "text" in str(err.value)
    with pytest.raises(APIError) as err:
        client.tts.convert(text="Hi.", config=CONFIG, references=[ReferenceAudio(audio=b"not audio", text="")])
    assert err.value.status == 400 and "references[0].audio" in str(err.value)
    with pytest.raises(APIError) as err:
        client.tts.convert(text="Hi.", config=TTSConfig(format="mp3", sample_rate=10000))
    assert err.value.status == 400 and "sample_rate" in str(err.value)
    with pytest.raises(WebSocketUpgradeError) as refused:  # refused before the handshake
        list(FishAudio(api_key="wrong", base_url=base_url).tts.stream_websocket(iter(["Hi."])))
    assert refused.value.response.status_code == 401
    with pytest.raises(WebSocketError):  # an error finish event
        list(client.tts.stream_websocket(iter(["Hi."]), reference_id="no-such-voice", config=CONFIG))


def test_json_body_is_accepted(base_url):
    body = {
        "text": "Hello.",
        "format": "pcm",
        "max_new_tokens": MAX_FRAMES,
        "sample_rate": 8000,
        "references": [{"audio": wav_b64(seconds=0.5), "text": "Hi."}],
    }
    response = httpx.post(f"{base_url}/v1/tts", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200 and len(response.content) > 0 and len(response.content) % 2 == 0


def test_legacy_sdk_session_and_websocket(base_url):
    """The older package (fish_audio_sdk) sends every field, None included, and parses models."""
    from fish_audio_sdk import Session, TTSRequest, WebSocketSession

    request = TTSRequest(text="Hello there.", format="wav")
    request_dict = request.model_dump()
    assert request_dict["prosody"] is None and request_dict["sample_rate"] is None
    session = Session(KEY, base_url=base_url)
    short = TTSRequest.model_validate({**request_dict, "temperature": 0.5})
    audio = b"".join(session.tts(short))
    assert len(read_wav(audio)[0]) > 0
    assert session.list_models(page_size=5).total >= 0
    with WebSocketSession(KEY, base_url=base_url) as ws:
        live = b"".join(ws.tts(TTSRequest(text="", format="pcm"), iter(["Hi", " there."])))
    assert len(live) > 0 and len(live) % 2 == 0


@pytest.mark.timeout(180)
def test_live_sessions_under_random_schedules_all_end(base_url, service, fish_app):
    """Concurrent sessions and /v1/tts streams with random pieces, flushes, pauses and early closes:
    every one ends, the engine gets all its slots back (no generation left running for a closed
    socket) and the gate all its admission places."""
    import random

    from httpx_ws import aconnect_ws

    words = "one two three. four five, six seven! eight nine ten? eleven twelve.".split(" ")

    async def session(seed: int) -> str:  # 1-3 sessions, one after another on one connection
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
            async with aconnect_ws("/v1/tts/live", client=http) as ws:
                for _ in range(rng.randint(1, 3)):
                    request = {"text": "", "format": "pcm", "max_new_tokens": rng.choice([3, 6, 40])}
                    await ws.send_bytes(ormsgpack.packb({"event": "start", "request": request}))
                    for word in words[: rng.randint(1, len(words))]:
                        await ws.send_bytes(ormsgpack.packb({"event": "text", "text": word + " "}))
                        if rng.random() < 0.2:
                            await ws.send_bytes(ormsgpack.packb({"event": "flush"}))
                        await asyncio.sleep(rng.random() * 0.03)
                    if rng.random() < 0.3:
                        await asyncio.sleep(rng.random() * 0.5)
                        return "aborted"  # leaving the block closes the socket mid-session
                    await ws.send_bytes(ormsgpack.packb({"event": "stop"}))
                    audio = b""
                    while (event := ormsgpack.unpackb(await ws.receive_bytes(timeout=120)))["event"] == "audio":
                        audio += event["audio"]
                    assert event["reason"] == "stop" and len(audio) % 2 == 0
                return "finished"  # leaving the block closes the socket between two sessions

    async def tts(seed: int) -> str:
        rng = random.Random(seed)
        body = ormsgpack.packb({"text": " ".join(words), "format": "pcm", "max_new_tokens": rng.choice([3, 40])})
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/msgpack"}
        ) as http:
            async with http.stream("POST", "/v1/tts", content=body, timeout=120) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    if rng.random() < 0.5:
                        return "aborted"  # leaving the block closes the connection mid-stream
        return "finished"

    async def go():
        return await asyncio.gather(*(session(seed) for seed in range(10)), *(tts(seed) for seed in range(4)))

    outcomes = asyncio.run(go())
    assert set(outcomes) <= {"finished", "aborted"} and "finished" in outcomes
    gate = limiter_of(fish_app)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        service.generator.free_slots < service.max_concurrency
        or any(t.name == "synthesis" for t in threading.enumerate())
        or gate.admitted
        or gate.running
    ):
        time.sleep(0.05)
    assert gate.admitted == 0 and gate.running == 0
    assert service.generator.free_slots == service.max_concurrency
    assert not any(t.name == "synthesis" for t in threading.enumerate())


# ---- tenants, bounds and errors on the Fish door ------------------------------------------------

ALICE, BOB = "key-of-alice", "key-of-bob"


def live_events(base_url, key, events, timeout=60):
    """Send `events` on /v1/tts/live, then read until the finish event; returns (audio events, finish)."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            for event in events:
                ws.send_bytes(ormsgpack.packb(event))
            audio = []
            while (event := ormsgpack.unpackb(ws.receive_bytes(timeout=timeout)))["event"] == "audio":
                audio.append(event)
            return audio, event


@pytest.fixture(scope="module")
def tenants_url(runner, app_settings):
    with serving(create_app(runner, app_settings(api_keys=f"alice:{ALICE},bob:{BOB}"))) as url:
        yield url


def test_a_tenant_cannot_list_get_use_or_delete_anothers_voice(tenants_url):
    clip = base64.b64decode(wav_b64(seconds=1.0))
    with FishAudio(api_key=ALICE, base_url=tenants_url) as alice, FishAudio(api_key=BOB, base_url=tenants_url) as bob:
        voice = alice.voices.create(title="Alice's voice", voices=[clip], texts=["A reference."])
        assert voice.id not in [v.id for v in bob.voices.list(page_size=100).items]
        for refused in (
            lambda: bob.voices.get(voice.id),
            lambda: bob.voices.delete(voice.id),
            lambda: bob.tts.convert(text="Hi.", config=CONFIG, reference_id=voice.id),
        ):
            with pytest.raises(NotFoundError) as err:
                refused()
            assert err.value.status == 404 and voice.id in err.value.message  # as for an id never saved
        start = {
            "event": "start",
            "request": {"text": "Hi.", "format": "pcm", "max_new_tokens": MAX_FRAMES, "reference_id": voice.id},
        }
        audio, finish = live_events(tenants_url, BOB, [start, {"event": "stop"}])
        assert not audio and finish["reason"] == "error" and "reference_id: no saved voice" in finish["message"]
        # Alice still has it, and can use it on both.
        assert alice.voices.get(voice.id).title == "Alice's voice"
        assert len(read_wav(alice.tts.convert(text="Hi.", config=CONFIG, reference_id=voice.id))[0]) > 0
        audio, finish = live_events(tenants_url, ALICE, [start, {"event": "stop"}])
        assert audio and finish == {"event": "finish", "reason": "stop"}
        alice.voices.delete(voice.id)


def test_errors_have_the_fish_shape_for_both_sdks(tenants_url):
    from fish_audio_sdk import Session
    from fish_audio_sdk.exceptions import HttpCodeErr

    wrong = httpx.post(f"{tenants_url}/v1/tts", json={"text": "Hi."}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"status": 401, "message": "invalid API key"}
    missing = httpx.get(f"{tenants_url}/model/nope", headers={"Authorization": f"Bearer {ALICE}"})
    assert missing.status_code == 404 and missing.json() == {"status": 404, "message": "no voice with id 'nope'"}
    bad = httpx.post(
        f"{tenants_url}/v1/tts",
        content=b"{",
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json() == {"status": 400, "message": "body: is not valid JSON"}
    with pytest.raises(HttpCodeErr) as err:  # the older SDK builds its error from exactly these two keys
        Session(ALICE, base_url=tenants_url).get_model("nope")
    assert err.value.status == 404 and err.value.message == "no voice with id 'nope'"
    with pytest.raises(AuthenticationError) as auth_err:
        FishAudio(api_key="nope", base_url=tenants_url).voices.list()
    assert auth_err.value.message == "invalid API key"


@pytest.fixture(scope="module")
def bounded(runner, app_settings):
    """One job per tenant; short live-session limits; uvicorn run as `python -m fish_worker.server` runs it."""
    from fish_worker.server.protocol import uvicorn_options

    settings = app_settings(
        api_keys=f"alice:{ALICE},bob:{BOB}",
        max_queued_jobs_per_tenant=1,
        retry_after_s=7,
        max_body_bytes=20_000,
        header_timeout_s=0.5,
        live_idle_timeout_s=1.0,
        live_max_session_s=2.5,
        live_max_text_chars=40,
    )
    app = create_app(runner, settings)
    with serving(app, **uvicorn_options(settings.server)) as url:
        yield url, limiter_of(app)


WS_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
}


def wait_all_released(gate):
    deadline = time.monotonic() + 10
    while gate.admitted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gate.admitted == 0


def test_live_sessions_and_tts_count_against_the_admission_bound(bounded):
    url, gate = bounded
    wait_all_released(gate)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ALICE}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:  # Alice's one place, held by an open session
            ws.send_bytes(ormsgpack.packb({"event": "start", "request": {"text": "", "format": "pcm"}}))
            with pytest.raises(WebSocketUpgradeError) as refused:  # refused before the handshake
                with connect_ws("/v1/tts/live", client=http):
                    pass
            assert refused.value.response.status_code == 429 and refused.value.response.headers["retry-after"] == "7"
            upgrade = http.get("/v1/tts/live", headers=WS_UPGRADE)  # the same refusal, its body read
            assert upgrade.status_code == 429 and upgrade.json()["status"] == 429
            assert "FISH_MAX_QUEUED_JOBS_PER_TENANT" in upgrade.json()["message"]
            with FishAudio(api_key=ALICE, base_url=url) as alice, pytest.raises(RateLimitError):
                alice.tts.convert(text="Hi.", config=CONFIG)
            with FishAudio(api_key=BOB, base_url=url) as bob:  # another tenant's place is its own
                assert len(read_wav(bob.tts.convert(text="Hi.", config=CONFIG))[0]) > 0
    wait_all_released(gate)  # the session's end gave its place back
    with FishAudio(api_key=ALICE, base_url=url) as alice:
        assert len(read_wav(alice.tts.convert(text="Hi.", config=CONFIG))[0]) > 0
    wait_all_released(gate)


def test_live_session_idle_timeout_text_limit_and_duration(bounded):
    url, gate = bounded
    start = {"event": "start", "request": {"text": "", "format": "pcm", "max_new_tokens": MAX_FRAMES}}
    began = time.monotonic()
    audio, finish = live_events(url, ALICE, [start])  # then nothing: idle
    assert finish["reason"] == "error" and "FISH_LIVE_IDLE_TIMEOUT_S" in finish["message"]
    assert 0.9 <= time.monotonic() - began < 10
    wait_all_released(gate)
    audio, finish = live_events(url, ALICE, [start, {"event": "text", "text": "x" * 41}])
    assert finish["reason"] == "error" and "FISH_LIVE_MAX_TEXT_CHARS" in finish["message"]
    wait_all_released(gate)
    # Text keeps coming (never idle) past the header timeout, until the session's time is up.
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ALICE}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            began = time.monotonic()
            ws.send_bytes(ormsgpack.packb(start))
            for _ in range(15):
                with contextlib.suppress(queue.Empty):
                    finish = ormsgpack.unpackb(ws.receive_bytes(timeout=0.3))
                    break
                ws.send_bytes(ormsgpack.packb({"event": "text", "text": "a"}))
            else:
                finish = ormsgpack.unpackb(ws.receive_bytes(timeout=10))
    assert finish["reason"] == "error" and "FISH_LIVE_MAX_SESSION_S" in finish["message"], finish
    assert 2.4 <= time.monotonic() - began < 6
    wait_all_released(gate)


def test_fish_bodies_over_the_limit_are_413(bounded):
    url, _ = bounded
    big = ormsgpack.packb({"text": "Hi.", "references": [{"audio": b"x" * 30_000, "text": ""}]})
    with FishAudio(api_key=ALICE, base_url=url) as alice, pytest.raises(APIError) as err:
        alice.tts.convert(text="Hi.", references=[ReferenceAudio(audio=b"x" * 30_000, text="")])
    assert err.value.status == 413 and "FISH_MAX_BODY_BYTES" in err.value.message
    response = httpx.post(
        f"{url}/v1/tts",
        content=big,
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/msgpack"},
    )
    assert response.status_code == 413 and response.json()["status"] == 413


def test_fish_routes_not_served_here_answer_in_fish_shape(client, base_url):
    # The SDK's account calls reach paths this server does not serve: a Fish-shaped 404 that the SDK
    # turns into its NotFoundError with our message, never a parse failure.
    with pytest.raises(NotFoundError) as caught:
        client.account.get_credits()
    assert "no such path: GET /wallet/self/api-credit" in str(caught.value)


def test_fish_asr_without_a_recognizer_says_how_to_configure_one(client):
    # This server has no FISH_ASR_*: the SDK's ASR call gets a Fish-shaped 400 saying what to set.
    with pytest.raises(APIError) as caught:
        client.asr.transcribe(audio=base64.b64decode(wav_b64()), language="en")
    assert caught.value.status == 400
    assert "audio: speech recognition is not configured: set FISH_ASR_MODEL_DIR or FISH_ASR_BASE_URL" in str(
        caught.value
    )


@pytest.mark.parametrize("fmt, bitrate", [("wav", 64000), ("mp3", 64000), ("opus", 64000), ("opus", 24)])
def test_opus_bitrate_in_bits_per_second_or_for_other_formats_is_accepted(base_url, fmt, bitrate):
    # LiveKit's Fish plugin sends opus_bitrate=64000 (bit/s) with every request, whatever the format.
    body = {"text": "Hi.", "format": fmt, "opus_bitrate": bitrate, "max_new_tokens": MAX_FRAMES}
    response = httpx.post(f"{base_url}/v1/tts", headers={"Authorization": f"Bearer {KEY}"}, json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.content) > 0


def test_an_opus_bitrate_that_is_neither_is_refused_naming_the_field(base_url):
    body = {"text": "Hi.", "format": "opus", "opus_bitrate": 50}
    response = httpx.post(f"{base_url}/v1/tts", headers={"Authorization": f"Bearer {KEY}"}, json=body, timeout=60)
    assert response.status_code == 400 and "opus_bitrate" in response.json()["message"]


def test_an_unknown_reference_id_says_how_to_find_local_voices(client):
    with pytest.raises(NotFoundError) as caught:
        client.tts.convert(text="Hello.", config=CONFIG, reference_id="802e3bc2b27e49c2995d23ef70e6ac89")
    assert "GET /model" in str(caught.value) and "POST /model" in str(caught.value)


def test_a_live_connection_carries_one_session_after_another(base_url):
    """After `finish` the socket takes the next `start`, as Fish's server does (LiveKit's plugin pools it)."""
    start = {"event": "start", "request": {"text": "", "format": "wav", "max_new_tokens": MAX_FRAMES}}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            for text in ("First turn.", "Second turn."):
                for event in (start, {"event": "text", "text": text}, {"event": "stop"}):
                    ws.send_bytes(ormsgpack.packb(event))
                audio = []
                while (event := ormsgpack.unpackb(ws.receive_bytes(timeout=60)))["event"] == "audio":
                    audio.append(event)
                assert event == {"event": "finish", "reason": "stop"}
                assert audio[0]["text"] == text  # each session is its own file, from its own header
                assert len(read_wav(b"".join(e["audio"] for e in audio))[0]) > 0


def test_an_unused_live_connection_closes_after_the_session_limit(bounded):
    """Between sessions a connection waits FISH_LIVE_MAX_SESSION_S (2.5 s here) for a start, then closes."""
    url, gate = bounded
    wait_all_released(gate)
    start = {"event": "start", "request": {"text": "Hi.", "format": "pcm", "max_new_tokens": MAX_FRAMES}}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ALICE}"}) as http:
        with connect_ws("/v1/tts/live", client=http) as ws:
            for event in (start, {"event": "stop"}):
                ws.send_bytes(ormsgpack.packb(event))
            while ormsgpack.unpackb(ws.receive_bytes(timeout=60))["event"] == "audio":
                pass
            assert gate.admitted == 1  # the open connection keeps its place between sessions
            finished = time.monotonic()
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive(timeout=10)
            assert closed.value.code == 1000 and 2.4 <= time.monotonic() - finished < 6
    wait_all_released(gate)
