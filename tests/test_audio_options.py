"""sample_rate, speed and volume on every door: the RunPod job, seed /run, RunPod /v2 and OpenAI's speed.

Each adjusted request is compared with the same request (same seed, so the same tokens) without the
adjustment: sample counts scale with rate / speed, RMS with the gain. A door that drops a field, or
maps it to the wrong one, fails here.
"""

from __future__ import annotations

import base64
import io
import json
import wave

import httpx
import numpy as np
import pytest

from fish_worker.server import create_app
from helpers import asgi_call, rms, run_job

KEY = "options-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB = {"message": "Hello there. How are you?", "max_tokens": 10, "seed": 5}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app(runner, app_settings):
    return create_app(runner, app_settings(api_keys=KEY))


def call(app, method, url, **kwargs) -> httpx.Response:
    return asgi_call(app, method, url, headers=AUTH, **kwargs)


def samples_of(chunks: list[dict]) -> tuple[np.ndarray, int]:
    """The audio of a job's chunks (float or pcm16) and the one rate they all report."""
    rates = {c["sample_rate"] for c in chunks}
    assert len(rates) == 1, rates
    parts = [
        np.asarray(c["audio"], dtype=np.float32)
        if c["audio_format"] == "float"
        else np.frombuffer(base64.b64decode(c["audio"]), "<i2") / 32768
        for c in chunks
    ]
    return np.concatenate(parts), rates.pop()


def speak(door: str, runner, app, extra: dict) -> tuple[np.ndarray, int]:
    """The job's audio and reported rate, through `door`."""
    job_input = {**JOB, **extra}
    if door == "job":  # the RunPod worker's handler, as runpod calls it
        chunks = run_job(runner, job_input)
    elif door == "job-stream":
        chunks = run_job(runner, {**job_input, "stream": True, "audio_format": "pcm16"})
    elif door == "seed":
        response = call(app, "POST", "/run", json={"input": job_input})
        assert response.status_code == 200, response.text
        chunks = [response.json()["output"]]
    elif door == "seed-stream":
        response = call(app, "POST", "/run", json={"input": {**job_input, "stream": True, "audio_format": "pcm16"}})
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert all(line["status"] == "success" for line in lines)
        chunks = [line["output"] for line in lines]
    elif door == "v2":
        response = call(app, "POST", "/v2/ep/runsync", json={"input": {**job_input, "audio_format": "pcm16"}})
        assert response.json()["status"] == "COMPLETED", response.text
        chunks = [response.json()["output"]]  # the result object, as on RunPod queue endpoints
    else:
        raise AssertionError(door)
    assert all("error" not in c for c in chunks), chunks
    return samples_of(chunks)


DOORS = ["job", "job-stream", "seed", "seed-stream", "v2"]


@pytest.fixture(scope="module")
def baselines(runner, app):
    cache: dict[str, tuple[np.ndarray, int]] = {}

    def baseline(door: str) -> tuple[np.ndarray, int]:
        if door not in cache:
            cache[door] = speak(door, runner, app, {})
        return cache[door]

    return baseline


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("rate", [16000, 24000])
def test_sample_rate_resamples_and_is_reported(door, rate, runner, app, baselines):
    plain, plain_rate = baselines(door)
    audio, reported = speak(door, runner, app, {"sample_rate": rate})
    assert plain_rate == 44100 and reported == rate
    expected = len(plain) * rate / 44100
    assert abs(len(audio) - expected) <= 0.01 * expected + 64, (len(audio), expected)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_duration(door, speed, runner, app, baselines):
    plain, _ = baselines(door)
    audio, reported = speak(door, runner, app, {"speed": speed})
    assert reported == 44100
    expected = len(plain) / speed
    assert abs(len(audio) - expected) <= 0.03 * expected, (len(audio), expected)


@pytest.mark.parametrize("door", DOORS)
def test_volume_scales_rms(door, runner, app, baselines):
    plain, _ = baselines(door)
    audio, _ = speak(door, runner, app, {"volume": -6.0})
    assert len(audio) == len(plain)
    assert rms(audio) / rms(plain) == pytest.approx(10 ** (-6 / 20), rel=0.02)


def test_streamed_adjusted_chunks_are_one_file_and_arrive_early(runner):
    """Rate, speed and volume together on a streamed WAV: one file, every chunk at the new rate, and
    each sentence's first chunk carries audio (the time-stretch does not hold it to the sentence end)."""
    chunks = run_job(
        runner, {**JOB, "stream": True, "audio_format": "wav", "sample_rate": 22050, "speed": 1.5, "volume": -3.0}
    )
    assert {c["sample_rate"] for c in chunks} == {22050}
    data = b"".join(base64.b64decode(c["audio"]) for c in chunks)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 22050
        samples = w.readframes(w.getnframes())
    # Each chunk's duration_s is its own audio at the output rate.
    assert sum(c["duration_s"] for c in chunks) == pytest.approx(len(samples) / 2 / 22050, abs=0.01)
    firsts = [c for c in chunks if c["text"]]
    assert len(firsts) == 2 and all(len(base64.b64decode(c["audio"])) > 1000 for c in firsts)
    whole = run_job(runner, {**JOB, "audio_format": "float", "sample_rate": 22050, "speed": 1.5, "volume": -3.0})
    # Streamed audio is decoded in windows, the whole one at once: same length, give or take the stretch.
    assert abs(len(samples) // 2 - len(whole[0]["audio"])) <= 0.02 * len(whole[0]["audio"])


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"sample_rate": 7999}, "sample_rate"),
        ({"sample_rate": 48001}, "sample_rate"),
        ({"sample_rate": "16000"}, "sample_rate"),
        ({"speed": 0.4}, "speed"),
        ({"speed": 2.5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"volume": 25.0}, "volume"),
        ({"volume": -25}, "volume"),
        ({"audio_format": "mp3", "sample_rate": 10000}, "sample_rate"),
        ({"audio_format": "aac", "sample_rate": 20000}, "sample_rate"),
        ({"audio_format": "opus", "sample_rate": 16000}, "sample_rate"),
    ],
)
def test_out_of_range_is_an_error_naming_the_field(runner, app, extra, field):
    chunks = run_job(runner, {**JOB, **extra})
    assert len(chunks) == 1 and chunks[0]["error"].startswith(f"{field}: "), chunks
    response = call(app, "POST", "/run", json={"input": {**JOB, **extra}})
    assert response.status_code == 400 and response.json()["error"].startswith(f"{field}: ")


@pytest.mark.parametrize("fmt, rate", [("mp3", 16000), ("opus", 48000), ("flac", 8000), ("aac", 22050)])
def test_compressed_formats_carry_the_rate(runner, fmt, rate):
    from helpers import decode_ffmpeg

    output = run_job(runner, {**JOB, "audio_format": fmt, "sample_rate": rate})[0]
    samples, decoded_rate = decode_ffmpeg(base64.b64decode(output["audio"]))
    assert output["sample_rate"] == decoded_rate == rate and len(samples) > 0


# ---- OpenAI /v1/audio/speech --------------------------------------------------------------------

SPEECH = {"model": "tts-1", "input": "Hello there. How are you?", "voice": "alloy", "max_tokens": 10, "seed": 5}


def openai_pcm(app, **fields) -> np.ndarray:
    response = call(app, "POST", "/v1/audio/speech", json={**SPEECH, "response_format": "pcm", **fields})
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, "<i2")


def openai_wav(app, **fields) -> tuple[np.ndarray, int]:
    response = call(app, "POST", "/v1/audio/speech", json={**SPEECH, "response_format": "wav", **fields})
    assert response.status_code == 200, response.text
    with wave.open(io.BytesIO(response.content)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def test_openai_pcm_is_24khz_and_speed_is_honoured(app):
    wav, wav_rate = openai_wav(app)
    pcm = openai_pcm(app)
    fast = openai_pcm(app, speed=2.0)
    assert wav_rate == 44100
    expected = len(wav) * 24000 / 44100  # OpenAI's pcm: 24 kHz, 16-bit, mono, no header
    assert abs(len(pcm) - expected) <= 0.01 * expected + 64, (len(pcm), expected)
    assert abs(len(fast) - len(pcm) / 2) <= 0.03 * len(pcm) / 2, (len(fast), len(pcm))


def test_openai_sample_rate_extra(app):
    audio, rate = openai_wav(app, sample_rate=16000, speed=0.5)
    plain, _ = openai_wav(app)
    assert rate == 16000
    expected = len(plain) * 16000 / 44100 * 2
    assert abs(len(audio) - expected) <= 0.03 * expected, (len(audio), expected)


@pytest.mark.parametrize("speed", [0.25, 4.0])
def test_openai_speed_outside_ours_is_a_400_naming_speed(app, speed):
    response = call(app, "POST", "/v1/audio/speech", json={**SPEECH, "speed": speed})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "speed" and "speed" in response.json()["error"]["message"]
