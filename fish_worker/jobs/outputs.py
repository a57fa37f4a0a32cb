"""Job output in the requested `audio_format`, kept within RunPod's result limits.

Whole results: one `audio_result` of all sentences; over the /run limit it goes to the configured
S3 bucket (a presigned `audio_url` comes back instead of `audio`), else the job fails with a
message naming the ways out. Streamed results: one `StreamEncoder` per job, so the chunks'
payloads, concatenated, are one continuous file; a payload over the per-chunk limit is split.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from fish_worker.audio.formats import (
    MAX_JSON_BYTES_PER_FLOAT,
    MEDIA_TYPES,
    MODEL_SAMPLE_RATE,
    Payload,
    ResultTooLargeError,
    StreamEncoder,
    audio_result,
    encode_audio_bytes,
    encoded_sample_rate,
    json_size,
    result_limit_bytes,
    split_payload,
)
from fish_worker.jobs.job import ResultRoute
from fish_worker.tts.requests import SpeechChunk
from fish_worker.settings import S3Settings, Settings
from fish_worker.storage import S3Uploader


def whole_output(chunks: list[SpeechChunk], fmt: str) -> dict[str, Any]:
    audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, dtype=np.float32)
    sample_rate = chunks[0].sample_rate if chunks else MODEL_SAMPLE_RATE
    out = {
        "text": " ".join(c.text for c in chunks),
        **audio_result(audio, fmt, sample_rate),
        "duration_s": round(len(audio) / sample_rate, 3),
    }
    if chunks:
        out["seed"] = chunks[0].seed
    return out


# Pre-synthesis size estimate (`result_too_large_error`): speech rarely goes faster than this, so
# text/rate is a floor on the audio's length, and the frames budget (max_tokens per sentence) a ceiling.
FAST_SPEECH_CHARS_PER_S = 20.0
FRAME_SAMPLES = 2048  # one codec frame of the 44.1 kHz DAC codec (~46 ms)
# JSON bytes per second of 44.1 kHz speech in each format, at the low end of what was measured
# (bench/result_sizes.py; docs/runpod.md): a result estimated over the limit surely is.
_LOW_BYTES_PER_SECOND: dict[str, float] = {
    "float": MODEL_SAMPLE_RATE * 7.0,  # rounded floats, "0.01234, " ~9 bytes; quiet samples fewer
    "pcm16": MODEL_SAMPLE_RATE * 2 * 4 / 3,  # base64 of 16-bit samples
    "wav": MODEL_SAMPLE_RATE * 2 * 4 / 3,
    "flac": MODEL_SAMPLE_RATE * 2 * 4 / 3 * 0.4,  # lossless speech: ~40-60% of PCM
    "mp3": 128_000 / 8 * 4 / 3,
    "opus": 24_000 / 8 * 4 / 3,
    "aac": 48_000 / 8 * 4 / 3,
}


def estimated_result_bytes(text: str, frames_budget: int, fmt: str) -> int:
    """A low estimate of a whole result's JSON size, from the text and the frames budget."""
    seconds = min(len(text.strip()) / FAST_SPEECH_CHARS_PER_S, frames_budget * FRAME_SAMPLES / MODEL_SAMPLE_RATE)
    return int(seconds * _LOW_BYTES_PER_SECOND[fmt])


def result_too_large_error(
    text: str, frames_budget: int, fmt: str, settings: Settings, route: ResultRoute | None
) -> ResultTooLargeError | None:
    """The error to fail with before any synthesis when the result can be seen not to fit `route`.

    None when it may fit, when there is no limit (route None), or when S3 takes what does not fit.
    """
    if route is None or settings.storage.s3.bucket:
        return None
    estimate, limit = estimated_result_bytes(text, frames_budget, fmt), result_limit_bytes(route)
    return ResultTooLargeError(estimate, limit, route, estimated=True) if estimate > limit else None


def within_result_limit(
    output: dict[str, Any], settings: Settings, route: ResultRoute | None = "run"
) -> dict[str, Any]:
    """`output` as is when it fits `route`'s limit (None: no limit), else uploaded to S3.

    Raises ResultTooLargeError when it does not fit and no bucket is configured.
    """
    if route is None:
        return output
    limit = result_limit_bytes(route)
    if _float_audio_surely_fits(output, limit):
        return output
    size = json_size(output)
    if size <= limit:
        return output
    uploader = uploader_from_settings(settings.storage.s3)
    if uploader is None:
        raise ResultTooLargeError(size, limit, route)
    fmt = output["audio_format"]
    if fmt == "float":
        # A list of floats has no file form; 16-bit WAV is the lossless-enough file for it.
        fmt = "wav"
        data = encode_audio_bytes(output["audio"], fmt, output["sample_rate"])
    else:
        data = base64.b64decode(output["audio"])
    uploaded = uploader.upload(data, suffix=f".{_SUFFIXES.get(fmt, fmt)}", content_type=MEDIA_TYPES[fmt])
    rest = {k: v for k, v in output.items() if k != "audio"}
    return {
        **rest,
        "audio_url": uploaded.url,
        "audio_format": fmt,
        "sample_rate": encoded_sample_rate(fmt, output["sample_rate"]),
        "audio_bytes": uploaded.size,
        "url_expires_in_s": uploaded.expires_in_s,
    }


_SUFFIXES = {"pcm16": "pcm", "opus": "ogg"}


def _float_audio_surely_fits(output: dict[str, Any], limit: int) -> bool:
    """True when float audio fits at the longest JSON a sample can take: spares writing a long
    number list once only to measure it (the RunPod SDK writes it again to send it)."""
    audio = output.get("audio")
    if not isinstance(audio, list):
        return False
    rest = json_size({k: v for k, v in output.items() if k != "audio"})
    return rest + len(', "audio": []') + len(audio) * MAX_JSON_BYTES_PER_FLOAT <= limit


def uploader_from_settings(s3: S3Settings) -> S3Uploader | None:
    if not s3.bucket:
        return None
    # Unset (or empty, as hub forms leave them: S3Settings reads "" as None): boto3's defaults.
    return S3Uploader(
        s3.bucket,
        endpoint_url=s3.endpoint_url,
        key_prefix=s3.key_prefix,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region_name=s3.region,
        url_expiry_s=s3.url_expiry_s,
    )


class StreamSummary:
    """What a streamed job's final result says once its chunks have gone out: never the audio again."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._deltas: list[str] = []
        self.duration_s = 0.0
        self.chunks = 0
        self.seed: int | None = None
        self.transcript: str | None = None  # a voice message's, sent first

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks += 1
        if isinstance(chunk.get("transcript"), str):
            self.transcript = chunk["transcript"]
        if chunk.get("text_delta"):
            self._deltas.append(chunk["text_delta"])
        if chunk.get("text"):
            self._texts.append(chunk["text"])
        self.duration_s += chunk.get("duration_s") or 0.0
        if self.seed is None and chunk.get("seed") is not None:
            self.seed = chunk["seed"]

    def output(self) -> dict[str, Any]:
        # Chat mode: the reply as written (its deltas); else the spoken sentences, as whole results join them.
        text = "".join(self._deltas) if self._deltas else " ".join(self._texts)
        out: dict[str, Any] = {"text": text, "duration_s": round(self.duration_s, 3), "chunks": self.chunks}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.transcript is not None:
            out["transcript"] = self.transcript
        return out


def final_output(chunks: list[dict[str, Any]], streamed: bool) -> dict[str, Any] | None:
    """A finished job's one result: its only chunk, or for a streamed job the summary of its chunks."""
    if not streamed:
        return chunks[0] if chunks else None
    summary = StreamSummary()
    for chunk in chunks:
        summary.add(chunk)
    return summary.output()


class StreamedOutput:
    """The chunks of one streamed job: feed each sentence, then `finish()` for the stream's tail."""

    def __init__(self, fmt: str) -> None:
        self.audio_format = fmt
        self._encoder: StreamEncoder | None = None  # made on the first sentence, at its sample rate
        self._last: SpeechChunk | None = None

    def chunks(self, speech: SpeechChunk) -> list[dict[str, Any]]:
        if self._encoder is None:
            self._encoder = StreamEncoder(self.audio_format, speech.sample_rate)
        self._last = speech
        duration_s = round(len(speech.audio) / speech.sample_rate, 3)
        return self._pieces(self._encoder, self._encoder.feed(speech.audio), speech, speech.text, duration_s)

    def finish(self) -> list[dict[str, Any]]:
        """What the encoder still holds (the last compressed frames); [] when nothing."""
        if self._encoder is None or self._last is None:
            return []
        return self._pieces(self._encoder, self._encoder.close(), self._last, "", 0.0, keep_empty=False)

    def _pieces(
        self,
        encoder: StreamEncoder,
        payload: Payload,
        speech: SpeechChunk,
        text: str,
        duration_s: float,
        keep_empty: bool = True,
    ) -> list[dict[str, Any]]:
        # An empty payload (the encoder is buffering a frame) still carries the sentence's text.
        pieces = split_payload(payload) or ([payload] if keep_empty else [])
        durations = _shares(duration_s, [len(piece) for piece in pieces])
        return [
            {
                "text": text if part == 0 else "",
                "audio": piece,
                "audio_format": self.audio_format,
                "sample_rate": encoder.sample_rate,
                "duration_s": durations[part],
                "seed": speech.seed,
                "index": speech.index,
                **({"part": part} if len(pieces) > 1 else {}),
            }
            for part, piece in enumerate(pieces)
        ]


def _shares(duration_s: float, sizes: list[int]) -> list[float]:
    """A window's duration split over its parts by their size (exact for float and pcm16, by bytes for
    the encoded formats), rounded to ms so that the parts add up to the window's duration_s."""
    total = sum(sizes)
    if len(sizes) <= 1 or total == 0:
        return [duration_s] * len(sizes)
    ends = [round(duration_s * sum(sizes[: i + 1]) / total, 3) for i in range(len(sizes))]
    return [round(end - start, 3) for start, end in zip([0.0, *ends[:-1]], ends)]
