"""Output formats through the job path: whole and streamed results, chunk limits, large results."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from fish_worker.audio import formats
from helpers import decode_ffmpeg, decode_soundfile, pcm16_of, rms, run_job

JOB = {"message": "One sentence here. And another one.", "max_tokens": 6, "seed": 7}


@pytest.fixture(scope="module")
def float_audio(runner):
    [out] = run_job(runner, JOB)
    assert out["audio_format"] == "float"
    return np.asarray(out["audio"], dtype=np.float32)


@pytest.mark.parametrize("fmt", ["pcm16", "wav", "flac"])
def test_lossless_whole_result_holds_the_same_16_bit_samples(runner, float_audio, fmt):
    [out] = run_job(runner, {**JOB, "audio_format": fmt})
    data = base64.b64decode(out["audio"])
    if fmt == "pcm16":
        samples = np.frombuffer(data, dtype="<i2")
    else:
        samples, rate = decode_soundfile(data, dtype="int16")
        assert rate == 44100
    # float_audio is rounded to 5 decimals (1e-5 < one 16-bit step): the same samples within one step.
    assert np.abs(samples.astype(np.int32) - pcm16_of(float_audio)).max() <= 1
    assert out["audio_format"] == fmt and out["sample_rate"] == 44100 and out["seed"] == 7


@pytest.mark.parametrize("fmt, rate", [("mp3", 44100), ("opus", 48000), ("aac", 44100)])
def test_lossy_whole_result_keeps_length_and_level(runner, float_audio, fmt, rate):
    [out] = run_job(runner, {**JOB, "audio_format": fmt})
    samples, decoded_rate = decode_ffmpeg(base64.b64decode(out["audio"]))
    assert decoded_rate == rate == out["sample_rate"]
    expected = len(float_audio) * rate / 44100
    assert abs(len(samples) - expected) < 0.1 * rate  # encoder delay/padding only
    # Rough level only: the tiny model's audio is broadband noise, which Opus mostly low-passes away.
    assert 0.1 * rms(float_audio) < rms(samples) < 2 * rms(float_audio)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_streamed_chunks_join_into_one_file(runner, float_audio, fmt):
    chunks = run_job(runner, {**JOB, "audio_format": fmt, "stream": True})
    data = b"".join(base64.b64decode(c["audio"]) for c in chunks)
    assert data.count(b"RIFF") <= 1 and data.count(b"fLaC") <= 1  # one header, not one per chunk
    assert [c["text"] for c in chunks if c["text"]] == ["One sentence here.", "And another one."]
    samples, rate = decode_ffmpeg(data)
    if fmt in ("wav", "flac"):
        # ffmpeg gives the int16 samples; float_audio is rounded to 1e-5, within one 16-bit step.
        assert np.abs(samples.astype(np.int32) - pcm16_of(float_audio)).max() <= 1
    else:
        assert abs(len(samples) - len(float_audio) * rate / 44100) < 0.1 * rate


def test_float_stream_splits_sentences_over_the_chunk_limit(runner):
    job = {"message": "A long sentence.", "max_tokens": 30, "seed": 2}
    [whole] = run_job(runner, job)
    chunks = run_job(runner, {**job, "stream": True})
    assert len(chunks) >= 2
    assert all(len(json.dumps(c)) <= formats.STREAM_CHUNK_LIMIT_BYTES for c in chunks)
    # Streamed sentences are decoded in windows while generated: the one-shot audio up to float noise.
    streamed = sum((c["audio"] for c in chunks), [])
    assert len(streamed) == len(whole["audio"])
    assert max(abs(a - b) for a, b in zip(streamed, whole["audio"])) < 1e-4
    assert chunks[0]["text"] == "A long sentence." and all(c["text"] == "" for c in chunks[1:])


def test_result_over_the_run_limit_without_a_bucket_is_a_clear_error(runner, monkeypatch):
    monkeypatch.setitem(formats.RESULT_LIMIT_BYTES, "run", 10_000)
    [out] = run_job(runner, JOB)
    assert out.keys() == {"error"}
    assert "limit for /run" in out["error"] and "compressed audio_format" in out["error"]


def test_unknown_format_is_rejected(runner):
    [out] = run_job(runner, {**JOB, "audio_format": "wma"})
    assert out["error"].startswith("audio_format: Input should be 'float'")


@pytest.mark.parametrize("fmt", ["float", "pcm16", "wav"])
def test_split_chunk_parts_each_report_their_own_duration(fmt):
    from fish_worker.jobs.outputs import StreamedOutput
    from fish_worker.tts.requests import SpeechChunk

    rate = 44100
    audio = (0.1 * np.sin(np.arange(12 * rate) / 7)).astype(np.float32)  # 12 s: over 1 MB in every format here
    parts = StreamedOutput(fmt).chunks(SpeechChunk(0, "Long.", audio, rate, seed=1))
    assert len(parts) >= 2 and [p["part"] for p in parts] == list(range(len(parts)))
    assert abs(sum(p["duration_s"] for p in parts) - 12.0) < 1e-6  # the parts add up to the window
    for p in parts:
        samples = len(p["audio"]) if fmt == "float" else len(base64.b64decode(p["audio"])) / 2
        assert p["duration_s"] == pytest.approx(samples / rate, abs=0.002)  # each its own share
