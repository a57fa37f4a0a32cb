"""Reference audio from a request: base64 WAV → mono float32 at the codec's sample rate."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile as sf
import soxr

from fish_worker.errors import JobInputError

FIELD = "reference_audio"
SILENCE_PEAK = 1e-4  # below this the clip carries no voice to clone


def decode_reference_audio(data_b64: str, sample_rate: int, max_seconds: float, max_bytes: int) -> np.ndarray:
    # Check the size before decoding: base64 is 4/3 of the bytes.
    if len(data_b64) > max_bytes * 4 // 3 + 4:
        raise JobInputError(FIELD, f"is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        raw = base64.b64decode(data_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise JobInputError(FIELD, "is not valid base64") from None
    if not raw:
        raise JobInputError(FIELD, "is empty")
    return read_wav(raw, sample_rate, max_seconds)


def read_wav(raw: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    try:
        with sf.SoundFile(io.BytesIO(raw)) as wav:
            if wav.format != "WAV":
                raise JobInputError(FIELD, f"must be a WAV file, got {wav.format}")
            if wav.frames > max_seconds * wav.samplerate:
                raise JobInputError(FIELD, f"is {wav.frames / wav.samplerate:.1f} s long, the limit is {max_seconds:g} s")
            audio = wav.read(dtype="float32", always_2d=True)
            source_rate = wav.samplerate
    except sf.LibsndfileError:
        raise JobInputError(FIELD, "is not a readable WAV file") from None
    if audio.shape[0] == 0:
        raise JobInputError(FIELD, "contains no samples")
    if not np.isfinite(audio).all():
        raise JobInputError(FIELD, "contains NaN or infinite samples")
    mono = audio.mean(axis=1)
    if source_rate != sample_rate:
        mono = soxr.resample(mono, source_rate, sample_rate, quality="HQ").astype(np.float32)
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        raise JobInputError(FIELD, "is silent")
    return np.clip(mono, -1.0, 1.0)
