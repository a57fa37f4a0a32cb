"""Every bad input gets `{"error": "<field>: ..."}` and the next good job still succeeds."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from helpers import run_job, wav_b64

GOOD = {"message": "Still serving.", "max_tokens": 4, "seed": 0}


def silent_wav() -> str:
    return wav_b64(amplitude=0.0)


def nan_wav() -> str:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    data = np.full(1600, np.nan, dtype=np.float32)
    sf.write(buf, data, 16000, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode()


BAD_INPUTS = [
    ({}, "message: Field required"),
    ({"message": ""}, "message: must contain text"),
    ({"message": "   "}, "message: must contain text"),
    ({"message": "x" * 2001}, "message: is 2001 characters, the limit is 2000"),
    ({"message": 5}, "message: Input should be a valid string"),
    ({"message": "hi", "temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"message": "hi", "temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
    ({"message": "hi", "temperature": "0.7"}, "temperature: Input should be a valid number"),
    ({"message": "hi", "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"message": "hi", "max_tokens": 10**6}, "max_tokens: must be at most 2048"),
    ({"message": "hi", "max_tokens": 1.5}, "max_tokens: Input should be a valid integer"),
    ({"message": "hi", "stream": "yes"}, "stream: Input should be a valid boolean"),
    ({"message": "hi", "top_p": -0.5}, "top_p: Input should be greater than or equal to 0"),
    ({"message": "hi", "repetition_penalty": 2.5}, "repetition_penalty: Input should be less than 2"),
    ({"message": "hi", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"message": "hi", "conversation_id": "../etc"}, "conversation_id: String should match pattern"),
    ({"message": "hi", "voice": "alice"}, "voice: unknown field"),
    (
        {"action": "bogus"},
        "action: unknown action 'bogus'; one of: save_voice, list_voices, delete_voice, end_conversation",
    ),
    ({"message": "hi", "action": None}, "action: unknown action None"),
    ({"message": "hi", "reference_audio": "not base64!!"}, "reference_audio: is not valid base64"),
    ({"message": "hi", "reference_audio": ""}, "reference_audio: is empty"),
    (
        {"message": "hi", "reference_audio": base64.b64encode(b"RIFFjunkjunk").decode()},
        "reference_audio: is not a readable audio file (WAV, FLAC, MP3, Ogg, WebM or M4A)",
    ),
    (
        {"message": "hi", "reference_audio": wav_b64(seconds=1 / 96000, sample_rate=96000)},  # 1 frame: 0 at 44.1 kHz
        "reference_audio: contains no samples",
    ),
    ({"message": "hi", "reference_audio": silent_wav()}, "reference_audio: is silent"),
    ({"message": "hi", "reference_audio": nan_wav()}, "reference_audio: contains NaN or infinite samples"),
    ({"message": "hi", "reference_audio": wav_b64(seconds=6.0)}, "reference_audio: is 6.0 s long, the limit is 5 s"),
    ({"message": "hi", "reference_audio": wav_b64(seconds=0.0)}, "reference_audio: contains no samples"),
]


@pytest.mark.parametrize(
    ("job_input", "expected"), BAD_INPUTS, ids=[e.split(":")[0] + f"-{i}" for i, (_, e) in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_a_clear_error_and_worker_keeps_serving(runner, job_input, expected):
    chunks = run_job(runner, job_input)
    assert len(chunks) == 1 and set(chunks[0]) == {"error"}
    assert isinstance(chunks[0]["error"], str)
    assert chunks[0]["error"].startswith(expected), chunks[0]["error"]
    [good] = run_job(runner, GOOD)
    assert len(good["audio"]) > 0


def test_input_that_is_not_an_object(runner):
    assert run_job(runner, "hello") == [{"error": "input: must be a JSON object, got str"}]


def test_oversized_reference_rejected_before_decoding(service):
    from fish_worker.audio.reference import decode_reference_audio
    from fish_worker.errors import JobInputError

    with pytest.raises(JobInputError, match="reference_audio: is larger than 1 MB"):
        decode_reference_audio("A" * (2 << 20), 44100, 30.0, 1 << 20)


def test_internal_fault_is_reported_and_next_job_succeeds(runner, service, monkeypatch):
    def broken_decode(codes):
        raise RuntimeError("codec exploded")

    with monkeypatch.context() as patch:
        patch.setattr(service.codec, "decode", broken_decode)
        [failed] = run_job(runner, GOOD)
    assert failed == {"error": "internal error: RuntimeError: codec exploded"}
    assert len(run_job(runner, GOOD)[0]["audio"]) > 0
