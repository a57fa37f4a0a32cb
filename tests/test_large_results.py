"""Results over RunPod's /run limit go to an S3-compatible bucket (moto's server) as a URL."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from fish_worker.audio import formats
from fish_worker.settings import S3Settings
from helpers import BUCKET, CREDENTIALS, decode_soundfile, pcm16_of, run_job

pytestmark = pytest.mark.usefixtures("no_ambient_aws_config")

JOB = {"message": "A result too large for RunPod.", "max_tokens": 6, "seed": 3}


def test_large_float_result_is_uploaded_as_wav(runner, settings, s3_endpoint, monkeypatch):
    [small] = run_job(runner, JOB)
    monkeypatch.setitem(formats.RESULT_LIMIT_BYTES, "run", 10_000)
    # The runner's service holds this very Settings object: its S3 section is what the job reads.
    monkeypatch.setattr(settings.storage, "s3", S3Settings(bucket=BUCKET, endpoint_url=s3_endpoint, **CREDENTIALS))

    [out] = run_job(runner, JOB)

    assert "audio" not in out and out["audio_format"] == "wav" and out["text"] == small["text"]
    response = httpx.get(out["audio_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert len(response.content) == out["audio_bytes"]
    samples, rate = decode_soundfile(response.content, dtype="int16")
    assert rate == 44100 and np.array_equal(samples, pcm16_of(np.asarray(small["audio"])))
