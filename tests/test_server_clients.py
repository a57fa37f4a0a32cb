"""Real clients against a real uvicorn on 127.0.0.1: RunPod's `runpod.Endpoint` and OpenAI's `openai`."""

from __future__ import annotations

import contextlib
import io
import threading

import numpy as np
import openai
import pytest
import runpod
import soundfile

from fish_worker.server import create_app
from helpers import decode_ffmpeg, serve_app

KEY = "client-test-key"
JOB = {"message": "Hello there. How are you?", "max_tokens": 6, "seed": 4}


@pytest.fixture(scope="module")
def base_url(runner, app_settings):
    with serve_app(create_app(runner, app_settings(api_keys=KEY))) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture
def endpoint(base_url, monkeypatch):
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{base_url}/v2")
    return runpod.Endpoint("local-endpoint", api_key=KEY)


def test_runpod_client_run_sync(endpoint):
    output = endpoint.run_sync({"input": JOB}, timeout=60)  # the result object, as on RunPod
    assert output["text"] == JOB["message"] and output["seed"] == 4 and len(output["audio"]) > 0


def test_runpod_client_run_status_output_and_stream(endpoint):
    job = endpoint.run({**JOB, "stream": True, "audio_format": "wav"})
    streamed = list(job.stream())
    assert [c["text"] for c in streamed] == ["Hello there.", "How are you?"]
    summary = {
        "text": "Hello there. How are you?",
        "duration_s": round(sum(c["duration_s"] for c in streamed), 3),
        "chunks": len(streamed),
        "seed": streamed[0]["seed"],
    }
    assert job.status() == "COMPLETED" and job.output(timeout=30) == summary  # never the audio again
    samples, rate = decode_ffmpeg(b"".join(__import__("base64").b64decode(c["audio"]) for c in streamed))
    assert rate == 44100 and len(samples) > 0
    assert endpoint.health()["workers"]["ready"] == 4  # FISH_MAX_CONCURRENCY's default, as on a RunPod worker


def test_runpod_client_cancel(endpoint):
    job = endpoint.run({"message": " ".join(f"Sentence {i}." for i in range(40)), "max_tokens": 200})
    assert job.cancel()["status"] == "CANCELLED"
    assert job.status() == "CANCELLED"


def test_runpod_client_wrong_key_is_unauthorized(base_url, monkeypatch):
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{base_url}/v2")
    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        runpod.Endpoint("local-endpoint", api_key="wrong").run_sync({"input": JOB})


def test_openai_client_speech(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY)
    response = client.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input="Hello there.",
        response_format="flac",
        extra_body={"max_tokens": 6, "stream": False},
    )
    samples, rate = decode_ffmpeg(response.content)
    assert rate == 44100 and len(samples) > 0
    # A whole file (stream: false): its header has the true length, so libsndfile reads it too.
    assert soundfile.info(io.BytesIO(response.content)).frames == len(samples)

    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="One. Two.",
        response_format="mp3",
        extra_body={"max_tokens": 6},
    ) as streamed:
        data = b"".join(streamed.iter_bytes(4096))
    assert len(decode_ffmpeg(data)[0]) > 0


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_openai_client_streams_the_first_bytes_before_the_file_is_done(base_url, service, monkeypatch, fmt):
    """By default, as OpenAI's endpoint: the client has bytes while later sentences are not yet synthesised.

    The service waits after the first sentence until the client has its first bytes (bounded): a door that
    sent nothing until the whole file was made would keep it waiting out the bound.
    """
    client_has_bytes = threading.Event()
    synthesised: list[int] = []  # sentence index of each chunk the service made
    waits: list[bool] = []  # True: the client's first bytes let the second sentence start
    synthesize = service.synthesize

    def first_sentence_then_wait_for_the_client(request, stop=None, **kwargs):
        with contextlib.closing(synthesize(request, stop, **kwargs)) as chunks:
            for chunk in chunks:
                synthesised.append(chunk.index)
                yield chunk
                if not waits:
                    waits.append(client_has_bytes.wait(60))

    monkeypatch.setattr(service, "synthesize", first_sentence_then_wait_for_the_client)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="Hello there. How are you? I am fine.",
        response_format=fmt,
        extra_body={"max_tokens": 6, "seed": 1},
    ) as response:
        pieces = response.iter_bytes()
        first = next(pieces)
        synthesised_by_then = list(synthesised)
        client_has_bytes.set()
        data = first + b"".join(pieces)
    assert synthesised_by_then == [0] and waits == [True]  # the first bytes came before sentences 1 and 2
    assert sorted(set(synthesised)) == [0, 1, 2]
    assert "content-length" not in response.headers and 0 < len(first) < len(data)
    if fmt != "pcm":
        samples, _ = decode_ffmpeg(data)
        assert len(samples) > 0


def test_openai_client_every_response_format(base_url):
    """Each of OpenAI's formats, aac included, is the same speech (same seed) at the format's rate."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY)
    durations = {}
    for fmt, rate in (("mp3", 44100), ("opus", 48000), ("aac", 44100), ("flac", 44100), ("wav", 44100), ("pcm", 24000)):
        content = client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="Hello there.",
            response_format=fmt,
            extra_body={"max_tokens": 6, "seed": 2},
        ).content
        if fmt == "pcm":  # headerless 16-bit at 24 kHz, as OpenAI's
            samples, decoded_rate = np.frombuffer(content, "<i2"), 24000
        else:
            samples, decoded_rate = decode_ffmpeg(content)
        assert decoded_rate == rate, fmt
        durations[fmt] = len(samples) / rate
    assert durations["wav"] > 0
    for fmt, seconds in durations.items():  # codec delay/padding adds a few frames at most
        assert seconds == pytest.approx(durations["wav"], abs=0.1), (fmt, durations)


def test_openai_client_errors(base_url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="Hi."
        )
    with pytest.raises(openai.BadRequestError, match="no saved voice named 'ghost'"):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0).audio.speech.create(
            model="tts-1", voice="ghost", input="Hi."
        )
