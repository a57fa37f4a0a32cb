"""Speech in through the HTTP doors, over real HTTP with the official clients unmodified: OpenAI's
/v1/audio/transcriptions (`openai`'s audio.transcriptions.create, every response_format) and Fish Audio's
/v1/asr (fish-audio-sdk's asr.transcribe, and the older fish_audio_sdk's Session.asr). The server has the
tiny random Whisper; what each door answers is what the Transcriber gives for the same clip."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import subprocess
import time

import httpx
import openai
import ormsgpack
import pytest
import srt
import webvtt
from fishaudio import FishAudio
from fishaudio.exceptions import APIError

from fish_worker.asr.transcriber import Transcriber
from fish_worker.asr.whisper import WhisperRecognizer
from fish_worker.jobs.runner import JobRunner
from fish_worker.server import create_app
from fish_worker.server.dependencies import limiter_of
from helpers import DecoderSteps, serve_app, wav_b64

KEY = "transcribe-key"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What is the weather like today?"], check=True, timeout=60)
    return path.read_bytes()


@pytest.fixture(scope="module")
def transcriber(tiny_whisper_dir) -> Transcriber:
    return Transcriber(WhisperRecognizer.load(tiny_whisper_dir, device="cpu"), max_seconds=30.0, max_bytes=1 << 22)


@pytest.fixture(scope="module")
def asr_app(service, settings, app_settings, transcriber):
    return create_app(JobRunner(service, settings, transcriber=transcriber), app_settings(api_keys=KEY))


@pytest.fixture(scope="module")
def base_url(asr_app):
    with serve_app(asr_app) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def bare_url(runner, app_settings):
    """A server with no recognizer configured."""
    with serve_app(create_app(runner, app_settings(api_keys=KEY))) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def heard(transcriber, speech_wav):
    transcript = transcriber.transcribe_bytes(speech_wav, language="en")
    assert transcript.text and transcript.segments
    return transcript


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0, timeout=120)


# ---- OpenAI /v1/audio/transcriptions ---------------------------------------------------------------------


def test_openai_json_and_text_are_the_transcript(base_url, speech_wav, heard):
    client = openai_client(base_url)
    result = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav), language="en")
    assert result.text == heard.text
    assert result.usage.seconds == -(-heard.duration_s // 1)
    text = client.audio.transcriptions.create(
        model="whisper-1",
        file=("q.wav", speech_wav),
        language="en",
        response_format="text",
        prompt="ignored",
        temperature=0.2,
    )
    assert text.strip() == heard.text


def test_openai_verbose_json_has_language_duration_and_timed_segments(base_url, speech_wav, heard):
    result = openai_client(base_url).audio.transcriptions.create(
        model="whisper-1",
        file=("q.wav", speech_wav),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert (result.text, result.language, result.duration) == (heard.text, "english", heard.duration_s)
    assert [(s.start, s.end, s.text) for s in result.segments] == [(s.start_s, s.end_s, s.text) for s in heard.segments]


def test_openai_srt_and_vtt_are_the_segments_as_subtitles(base_url, speech_wav, heard):
    client = openai_client(base_url)
    subtitles = client.audio.transcriptions.create(
        model="whisper-1", file=("q.wav", speech_wav), language="en", response_format="srt"
    )
    cues = list(srt.parse(subtitles))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (round(s.start_s, 3), round(s.end_s, 3), " ".join(s.text.split())) for s in heard.segments
    ]
    captions = client.audio.transcriptions.create(
        model="whisper-1", file=("q.wav", speech_wav), language="en", response_format="vtt"
    )
    assert captions.startswith("WEBVTT")
    parsed = webvtt.from_string(captions)
    assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.text) for c in parsed] == [
        (round(s.start_s * 1000), round(s.end_s * 1000), " ".join(s.text.split())) for s in heard.segments
    ]


def test_openai_transcription_errors_name_the_field(base_url, bare_url, speech_wav):
    client = openai_client(base_url)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("q.wav", b"not audio at all"))
    assert caught.value.body["param"] == "file" and caught.value.body["message"].startswith("file: ")
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav), language="klingon")
    assert caught.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav), temperature=1.5)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav), stream=True)
    assert caught.value.body["param"] == "stream"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(bare_url).audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav))
    assert caught.value.body["message"] == (
        "file: speech recognition is not configured: set FISH_ASR_MODEL_DIR or FISH_ASR_BASE_URL"
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=f"{base_url}/v1", max_retries=0).audio.transcriptions.create(
            model="whisper-1", file=("q.wav", speech_wav)
        )


# ---- Fish /v1/asr ------------------------------------------------------------------------------------------


def test_fish_sdk_asr_is_the_transcript_with_duration_in_ms(base_url, speech_wav, heard):
    with FishAudio(api_key=KEY, base_url=base_url) as client:
        result = client.asr.transcribe(audio=speech_wav, language="en")
        untimed = client.asr.transcribe(audio=speech_wav, language="en", include_timestamps=False)
    assert result.text == heard.text and result.duration == heard.duration_s * 1000
    assert [(s.start, s.end, s.text) for s in result.segments] == [(s.start_s, s.end_s, s.text) for s in heard.segments]
    assert untimed.text == heard.text and untimed.segments == []


def test_legacy_fish_sdk_asr(base_url, speech_wav, heard):
    from fish_audio_sdk import ASRRequest, Session

    session = Session(KEY, base_url=base_url)
    result = session.asr(ASRRequest(audio=speech_wav, language="en"))
    assert result.text == heard.text and result.duration == heard.duration_s * 1000


def test_fish_asr_json_body_takes_base64_audio(base_url, speech_wav, heard):
    body = {"audio": base64.encodebytes(speech_wav).decode(), "language": "en", "ignore_timestamps": True}
    response = httpx.post(f"{base_url}/v1/asr", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json() == {"text": heard.text, "duration": heard.duration_s * 1000, "segments": []}


def test_fish_asr_errors_are_fish_shaped_and_name_the_field(base_url, speech_wav):
    with FishAudio(api_key=KEY, base_url=base_url) as client:
        with pytest.raises(APIError) as caught:
            client.asr.transcribe(audio=b"", language="en")
        assert caught.value.status == 400 and "audio: " in str(caught.value)
        with pytest.raises(APIError) as caught:
            client.asr.transcribe(audio=speech_wav, language="klingon")
        assert caught.value.status == 400 and "language: " in str(caught.value)
    response = httpx.post(f"{base_url}/v1/asr", json={"language": "en"}, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400 and response.json()["message"].startswith("audio: ")
    assert set(response.json()) == {"status", "message"}


# ---- admission: both doors are work like a job's ---------------------------------------------------------


def test_an_abandoned_transcription_is_stopped_and_gives_its_slot_back(
    asr_app, base_url, transcriber, speech_wav, heard
):
    """A client hangs up a few decoder steps into its transcription: the recognizer stops at its next
    step and the slot is free, long before the steps the whole call takes."""
    limiter = limiter_of(asr_app)
    model = transcriber.recognizer.model
    clip = base64.b64decode(wav_b64(seconds=25.0))
    with DecoderSteps(model) as whole:
        transcriber.transcribe_bytes(clip, language="en")
    assert whole.count > 10
    body = ormsgpack.packb({"audio": clip, "language": "en"})
    host, port = base_url.removeprefix("http://").split(":")
    with DecoderSteps(model, delay_s=0.05) as steps:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/asr HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            steps.wait_for(3)
            assert limiter.running == 1  # transcribing in a generation slot, admitted like a job
        at_hang_up = steps.count
        deadline = time.monotonic() + 60
        while (limiter.running or limiter.admitted) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (limiter.running, limiter.admitted) == (0, 0)
        assert steps.count - at_hang_up <= 3  # the step running, the one the disconnect raced, no more
        assert steps.count < whole.count
    assert transcriber.recognizer.idle
    with FishAudio(api_key=KEY, base_url=base_url) as client:
        assert client.asr.transcribe(audio=speech_wav, language="en").text == heard.text


def test_a_full_server_answers_429_in_each_doors_shape(asr_app, base_url, speech_wav):
    limiter = limiter_of(asr_app)
    held = [limiter.admit(f"other-{i}") for i in range(limiter.max_queued_jobs)]  # the server is full
    try:
        with pytest.raises(openai.RateLimitError):
            openai_client(base_url).audio.transcriptions.create(model="whisper-1", file=("q.wav", speech_wav))
        response = httpx.post(
            f"{base_url}/v1/asr",
            json={"audio": base64.b64encode(speech_wav).decode()},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 429 and set(response.json()) == {"status", "message"}
    finally:
        for admission in held:
            admission.release()


@pytest.mark.timeout(240)
def test_concurrent_transcriptions_with_random_hang_ups_all_end_and_give_their_slots_back(
    asr_app, base_url, speech_wav, heard, caplog
):
    """Random schedules: requests on both doors, some abandoned at a random moment; every one ends (its
    transcript, a 429, or the hang-up), and afterwards no slot or admission is left held."""
    import asyncio
    import random

    limiter = limiter_of(asr_app)
    rng = random.Random(7)
    headers = {"Authorization": f"Bearer {KEY}"}

    async def one(client: httpx.AsyncClient, i: int) -> str:
        if i % 2:
            request = client.post(
                "/v1/audio/transcriptions",
                headers=headers,
                files={"file": ("q.wav", speech_wav)},
                data={"language": "en"},
            )
        else:
            request = client.post(
                "/v1/asr",
                headers={**headers, "Content-Type": "application/msgpack"},
                content=ormsgpack.packb({"audio": speech_wav, "language": "en"}),
            )
        task = asyncio.ensure_future(request)
        if rng.random() < 0.4:  # hang up at a random moment
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            task.cancel()
        try:
            response = await task
        except asyncio.CancelledError:
            return "abandoned"
        if response.status_code == 200:
            assert response.json()["text"] == heard.text
            return "transcribed"
        assert response.status_code == 429, response.text
        return "busy"

    async def schedule(seed: int) -> list[str]:
        rng.seed(seed)
        # A fresh connection per request, so a hang-up closes its socket (what the server sees).
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(12)))

    seen: set[str] = set()
    for seed in range(3):
        outcomes = asyncio.run(schedule(seed))
        seen |= set(outcomes)
        deadline = time.monotonic() + 60
        while (limiter.running or limiter.admitted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (limiter.running, limiter.admitted) == (0, 0), outcomes
    assert {"transcribed", "abandoned"} <= seen
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]  # no traceback: a hang-up is the 499 nobody reads, not a failure


# ---- the subtitle formats on awkward transcripts -----------------------------------------------------------


def test_subtitles_keep_every_segment_and_stay_parseable():
    from fish_worker.asr.backend import Transcript, TranscriptSegment
    from fish_worker.server.transcript_formats import fish_asr_response, srt_text, vtt_text

    awkward = Transcript(
        "a --> b\n\nc d",
        "en",
        3.5,
        (
            TranscriptSegment(0.0, 1.25, "a --> b\n\nc"),  # a timing arrow and an empty line inside the text
            TranscriptSegment(1.25, 1.25, "d"),  # zero-length, as Whisper can give: kept, not dropped
        ),
    )
    cues = list(srt.parse(srt_text(awkward)))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (0.0, 1.25, "a -> b c"),
        (1.25, 1.25, "d"),
    ]
    captions = webvtt.from_string(vtt_text(awkward))
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:01.250", "a -> b c"),
        ("00:00:01.250", "00:00:01.250", "d"),
    ]
    # A recognizer that gives text but no segments: one cue over the whole clip.
    bare = Transcript("hello", "en", 2.0, ())
    assert [c.content for c in srt.parse(srt_text(bare))] == ["hello"]
    assert fish_asr_response(bare, timestamps=True)["segments"] == [{"text": "hello", "start": 0.0, "end": 2.0}]
    assert srt_text(Transcript("", None, 1.0, ())) == "" and vtt_text(Transcript("", None, 1.0, ())).startswith(
        "WEBVTT"
    )
