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
    ResultTooLargeError,
    StreamEncoder,
    audio_result,
    encode_audio_bytes,
    encoded_sample_rate,
    json_size,
    result_limit_bytes,
    split_payload,
)
from fish_worker.service import SpeechChunk
from fish_worker.settings import Settings
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


def within_result_limit(output: dict[str, Any], settings: Settings, route: str | None = "run") -> dict[str, Any]:
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
    uploader = uploader_from_settings(settings)
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


def uploader_from_settings(settings: Settings) -> S3Uploader | None:
    if not settings.s3_bucket:
        return None
    # `or None`: an empty variable (as hub forms leave them) means "not set", boto3's defaults.
    return S3Uploader(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url or None,
        key_prefix=settings.s3_key_prefix,
        access_key_id=settings.s3_access_key_id or None,
        secret_access_key=settings.s3_secret_access_key or None,
        region_name=settings.s3_region or None,
        url_expiry_s=settings.s3_url_expiry_s,
    )


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
        return self._pieces(self._encoder.feed(speech.audio), speech, speech.text, duration_s)

    def finish(self) -> list[dict[str, Any]]:
        """What the encoder still holds (the last compressed frames); [] when nothing."""
        if self._encoder is None or self._last is None:
            return []
        return self._pieces(self._encoder.close(), self._last, "", 0.0, keep_empty=False)

    def _pieces(self, payload, speech: SpeechChunk, text: str, duration_s: float,
                keep_empty: bool = True) -> list[dict[str, Any]]:
        # An empty payload (the encoder is buffering a frame) still carries the sentence's text.
        pieces = split_payload(payload) or ([payload] if keep_empty else [])
        return [
            {
                "text": text if part == 0 else "",
                "audio": piece,
                "audio_format": self.audio_format,
                "sample_rate": self._encoder.sample_rate,
                "duration_s": duration_s if part == 0 else 0.0,
                "seed": speech.seed,
                "index": speech.index,
                **({"part": part} if len(pieces) > 1 else {}),
            }
            for part, piece in enumerate(pieces)
        ]
