"""Reference audio from any door: a file's bytes (or base64 text) → mono float32 at the codec's rate.

The one decoder for input audio, used by every door (seed/RunPod jobs, save_voice, Fish /v1/tts,
POST /model, the live socket's start), so they accept the same files and refuse them the same way:

  text      base64, line breaks and spaces allowed, optionally a `data:<type>;base64,` URI
  files     whatever FFmpeg (PyAV) decodes in WAV, AIFF, FLAC, MP3, Ogg (Vorbis/Opus), WebM/Matroska,
            MP4/M4A (AAC) or ADTS AAC; other containers are refused before their header is read
  rates     1 kHz to 768 kHz, up to 32 channels (averaged to mono), resampled with soxr as it decodes

Decoding is incremental and the limits are checked while it runs: a file whose container states
a duration over the limit is refused before any decoding, and decoding stops at the first frame
that passes `max_seconds`, so a small file that expands to hours (a constant-valued FLAC) costs at
most the limit's worth of samples. Errors are JobInputError naming `field`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import TYPE_CHECKING

import numpy as np
import soxr

from fish_worker.errors import JobInputError

if TYPE_CHECKING:
    import av

FIELD = "reference_audio"
SILENCE_PEAK = 1e-4  # below this the clip carries no voice to clone
# FFmpeg demuxers allowed to read a client's bytes (its `format_whitelist`): audio containers only,
# none that opens other files or URLs (HLS, concat, ...).
DEMUXERS = "wav,w64,aiff,flac,mp3,ogg,matroska,webm,mov,mp4,m4a,aac"
MIN_RATE, MAX_RATE = 1_000, 768_000  # Hz; outside, a header is lying or the clip is no voice
MAX_CHANNELS = 32
# Stated durations can be estimates (an MP3 without a Xing header) and include encoder padding;
# the decoded length, checked exactly, is what counts. Only a clearly longer claim is refused up front.
STATED_SLACK_S = 0.5
UNREADABLE = "is not a readable audio file (WAV, FLAC, MP3, Ogg, WebM or M4A)"
_DATA_URI = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


def decode_reference_audio(
    audio: str | bytes, sample_rate: int, max_seconds: float, max_bytes: int, field: str = FIELD
) -> np.ndarray:
    """Base64 text or a file's bytes → mono float32 at `sample_rate`, clipped to [-1, 1]."""
    return decode_audio_file(reference_bytes(audio, max_bytes, field), sample_rate, max_seconds, field)


def reference_bytes(audio: str | bytes, max_bytes: int, field: str = FIELD) -> bytes:
    """The file's bytes, from base64 text (see `base64_audio`) or as given; at most `max_bytes`."""
    # Raised as new objects, never kept in a local: an exception held by a frame in its own traceback
    # is a reference cycle, which would keep this frame's `audio` (up to a whole body) until a GC pass.
    if isinstance(audio, str):
        # Bounded before any copy: base64 is 4/3 of the bytes, and line breaks add at most that much again.
        if len(audio) > 2 * (max_bytes * 4 // 3 + 4) + 1024:
            raise _too_large(field, max_bytes)
        audio = base64_audio(audio, field)
    if len(audio) > max_bytes:
        raise _too_large(field, max_bytes)
    if not audio:
        raise JobInputError(field, "is empty")
    return bytes(audio)


def _too_large(field: str, max_bytes: int) -> JobInputError:
    return JobInputError(field, f"is larger than {max_bytes // (1024 * 1024)} MB")


def base64_audio(text: str, field: str = FIELD) -> bytes:
    """Standard base64, whitespace (MIME line breaks) ignored, after an optional `data:...;base64,` prefix."""
    text = text.strip()
    if uri := _DATA_URI.match(text):
        text = text[uri.end() :]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise JobInputError(field, "is not valid base64") from None


def decode_audio_file(raw: bytes, sample_rate: int, max_seconds: float, field: str = FIELD) -> np.ndarray:
    """An audio file's bytes → mono float32 at `sample_rate`, refusing it as soon as a limit is passed."""
    import av  # FFmpeg: loaded when the first clip is decoded, not by every importer of this module

    if not raw:
        raise JobInputError(field, "is empty")
    try:
        with av.open(io.BytesIO(raw), "r", container_options={"format_whitelist": DEMUXERS}) as container:
            audio = _decode_mono(container, sample_rate, max_seconds, field)
    except JobInputError:  # a ValueError too: said as raised
        raise
    except (av.FFmpegError, ValueError, EOFError, OverflowError):
        # ValueError: PyAV's, e.g. a rate or layout that changes mid-stream
        raise JobInputError(field, UNREADABLE) from None
    if audio.size == 0:
        raise JobInputError(field, "contains no samples")
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        raise JobInputError(field, "is silent")
    clipped: np.ndarray = np.clip(audio, -1.0, 1.0)
    return clipped


def _decode_mono(
    container: av.container.InputContainer, sample_rate: int, max_seconds: float, field: str
) -> np.ndarray:
    import av

    if not container.streams.audio:
        raise JobInputError(field, "contains no audio stream")
    stream = container.streams.audio[0]
    codec = stream.codec_context
    if codec is None:  # a codec FFmpeg has no decoder for
        raise JobInputError(field, UNREADABLE)
    rate = codec.sample_rate or 0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise JobInputError(field, f"has a sample rate of {rate} Hz; {MIN_RATE}-{MAX_RATE} Hz are accepted")
    if codec.channels > MAX_CHANNELS:  # decoding time grows with channels, whatever the length
        raise JobInputError(field, f"has {codec.channels} channels; at most {MAX_CHANNELS} are accepted")
    stated = _stated_seconds(container, stream)
    if stated is not None and stated > max_seconds + STATED_SLACK_S:
        raise JobInputError(field, f"is {stated:.1f} s long, the limit is {max_seconds:g} s")

    max_frames = int(max_seconds * rate)  # source samples per channel
    to_float = av.AudioResampler(format="fltp")  # sample format only: same rate, same channels
    resampler = (
        soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ") if rate != sample_rate else None
    )
    decoded, pieces = 0, []
    for frame in container.decode(stream):
        decoded += frame.samples
        if decoded > max_frames:  # checked before the frame is converted: at most one frame over
            raise JobInputError(field, f"is longer than the limit of {max_seconds:g} s")
        for planar in to_float.resample(frame):
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are refused just below
                mono = planar.to_ndarray().mean(axis=0, dtype=np.float32)
            if not np.isfinite(mono).all():
                raise JobInputError(field, "contains NaN or infinite samples")
            pieces.append(resampler.resample_chunk(mono) if resampler is not None else mono)
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _stated_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The longest duration the file claims (container or stream header), if it claims one."""
    import av

    claims = []
    if container.duration is not None and container.duration > 0:
        claims.append(container.duration / av.time_base)
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        claims.append(float(stream.duration * stream.time_base))
    return max(claims, default=None)
