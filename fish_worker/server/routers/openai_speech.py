"""OpenAI-compatible speech: POST /v1/audio/speech (for Open WebUI and the `openai` client).

As OpenAI's endpoint does, the body streams: audio leaves while later sentences are still being
synthesised, as one continuous file in `response_format` whose header says "length unknown" (see
fish_worker/audio/formats.py), or, with `stream_format: "sse"`, as OpenAI's speech.audio.delta events.
`stream: false` (an extra; the openai client: `extra_body={"stream": False}`) waits for the whole file
and sends it with its true length in its header and a Content-Length (libsndfile reads it as any file).
`voice` is a saved voice id; OpenAI's own voice names (alloy, ...) mean the model's default voice.

The request becomes one SynthesisRequest (`synthesis_request`), spoken by the TTS service in a
generation slot (limiter.py) and encoded straight into the response body: no RunPod job shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fish_worker.audio.formats import MEDIA_TYPES, StreamEncoder, encode_audio_bytes
from fish_worker.audio.postprocess import MAX_SAMPLE_RATE, MAX_SPEED, MIN_SAMPLE_RATE, MIN_SPEED, AudioAdjustments
from fish_worker.errors import ErrorKind, JobInputError, WorkerError, bounded, shown
from fish_worker.jobs.inputs import check_encodable
from fish_worker.jobs.output_adjustments import adjusted_speech, output_adjustments
from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.dependencies import AppSettings, Limiter, Speech
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import ApiError, api_error, error_body, status_of
from fish_worker.settings import Settings
from fish_worker.tts.requests import SEED_LIMIT, SavedVoiceRef, SpeechChunk, SynthesisRequest, check_text
from fish_worker.tts.service import NO_AUDIO_ERROR
from fish_worker.tts.voices import VoiceStore, validate_voice_id

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)])

OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
        "default",
    }
)
# OpenAI's names → ours. pcm is headerless, so its rate is OpenAI's: 16-bit little-endian at 24 kHz.
_FORMATS = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "wav", "pcm": "pcm16"}
OPENAI_PCM_SAMPLE_RATE = 24_000
# The service's field names → this request's, in errors.
_FIELDS = {"message": "input", "voice_id": "voice"}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we have no use for

    model: str = Field("fish-speech", description="Accepted and ignored: this server has one model.")
    input: str = Field(description="The text to speak.")
    voice: str = Field("default", description="A saved voice id, or an OpenAI voice name for the default voice.")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = Field(
        "mp3", description="pcm: 16-bit little-endian at 24 kHz, as OpenAI's; aac: AAC-LC in ADTS frames."
    )
    speed: float = Field(
        1.0, ge=MIN_SPEED, le=MAX_SPEED, description="0.5 to 2.0 here (OpenAI allows 0.25 to 4.0); pitch is kept."
    )
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(None, description="Accepted and ignored.")
    # Fish Speech extras (the openai client sends them with extra_body=...).
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="Fish Speech: sampling seed, for repeatable audio.")
    max_tokens: int | None = Field(None, ge=1, description="Fish Speech: most codec frames per sentence.")
    stream: bool = Field(
        True,
        description="Fish Speech: true (as OpenAI) sends audio as it is made, in a file "
        "whose header says length unknown; false sends the whole file with its "
        "true length and a Content-Length. stream_format 'sse' always streams.",
    )
    sample_rate: int | None = Field(
        None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, description="Fish Speech: output rate (pcm: 24000, else 44100)."
    )

    @property
    def streamed(self) -> bool:
        return self.stream or self.stream_format == "sse"


def synthesis_request(body: SpeechRequest, settings: Settings, voice_id: str | None) -> SynthesisRequest:
    """The one place this door's fields become the service's (JobInputError naming the service's field)."""
    check_encodable(body.model_dump())  # every field, the ignored ones (model, instructions) too
    try:
        check_text(body.input, settings)
    except ValueError as exc:
        raise JobInputError("message", str(exc)) from None
    frames = body.max_tokens if body.max_tokens is not None else SynthesisRequest.frames_per_sentence
    if frames > settings.max_tokens_limit:
        raise JobInputError("max_tokens", f"must be at most {settings.max_tokens_limit}")
    return SynthesisRequest(
        text=body.input,
        frames_per_sentence=frames,
        seed=body.seed,
        stream=body.streamed,
        voice=SavedVoiceRef(voice_id) if voice_id is not None else None,
    )


def adjustments(body: SpeechRequest, audio_format: str) -> AudioAdjustments:
    rate = body.sample_rate
    if rate is None and body.response_format == "pcm":
        rate = OPENAI_PCM_SAMPLE_RATE
    return output_adjustments(audio_format, rate, body.speed)


@router.post(
    "/audio/speech",
    summary="Speak `input` (OpenAI audio.speech)",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}}}},
)
async def speech(body: SpeechRequest, request: Request, limiter: Limiter, tts: Speech, settings: AppSettings):
    # An unknown response_format was refused with SpeechRequest (400, param response_format).
    audio_format = _FORMATS[body.response_format]
    tenant = tenant_of(request)
    voices = tts.voices.store.for_tenant(tenant)
    try:
        synthesis = synthesis_request(body, settings, _saved_voice(body.voice, voices))
        adjusted = adjustments(body, audio_format)
    except WorkerError as exc:
        raise _api_error(exc) from None

    admission = limiter.admit(tenant)  # 429 when the server or this tenant has too many jobs
    chunks = limiter.speech(
        admission, lambda stop: adjusted_speech(tts.synthesize(synthesis, stop, voices=voices), adjusted)
    )
    # The first chunk is awaited before answering, so a bad voice or text is an error status, not a cut stream.
    first = await while_connected(request, _next(chunks), chunks.aclose)  # hanging up stops the generation
    if first is None:
        raise ApiError(status_of(ErrorKind.BAD_INPUT), NO_AUDIO_ERROR)
    if body.stream_format == "sse":
        return StreamingResponse(_sse(_encoded(first, chunks, audio_format)), media_type="text/event-stream")
    if body.streamed:
        return StreamingResponse(_audio(_encoded(first, chunks, audio_format)), media_type=MEDIA_TYPES[audio_format])
    spoken = [first] + await while_connected(request, _rest(chunks), chunks.aclose)
    audio = np.concatenate([c.audio for c in spoken])
    data = await asyncio.to_thread(encode_audio_bytes, audio, audio_format, first.sample_rate)
    return Response(data, media_type=MEDIA_TYPES[audio_format])


def _saved_voice(voice: str, voices: VoiceStore) -> str | None:
    try:
        if voices.exists(validate_voice_id(voice)):
            return voice
    except ValueError:
        pass
    if voice.lower() in OPENAI_VOICES:
        return None
    raise ApiError(
        400, f"voice: no saved voice named {shown(voice)} (save one with the save_voice action)", param="voice"
    )


async def _next(chunks: AsyncGenerator[SpeechChunk, None]) -> SpeechChunk | None:
    """The next chunk (None at the end); a failure closes the generation and becomes this door's error."""
    try:
        return await anext(chunks, None)
    except WorkerError as exc:
        await chunks.aclose()
        raise _api_error(exc) from None
    except Exception as exc:  # a fault of ours: log the traceback, tell the caller briefly
        await chunks.aclose()
        log.exception("speech failed")
        raise ApiError(500, bounded(f"internal error: {type(exc).__name__}: {exc}")) from None


async def _rest(chunks: AsyncGenerator[SpeechChunk, None]) -> list[SpeechChunk]:
    spoken = []
    while (chunk := await _next(chunks)) is not None:
        spoken.append(chunk)
    return spoken


def _api_error(exc: WorkerError) -> ApiError:
    return api_error(exc, _FIELDS)  # in this request's words: "input", not the service's "message"


async def _encoded(
    first: SpeechChunk, chunks: AsyncGenerator[SpeechChunk, None], audio_format: str
) -> AsyncIterator[bytes | ApiError]:
    """One continuous file of the chunks' audio, in pieces as they come.

    A limit met mid-stream (FISH_MAX_JOB_FRAMES; a WorkerError) ends the file there, complete, and
    comes last, as this door's error: the status went out with the headers, so the body must say it.
    """
    encoder = StreamEncoder(audio_format, first.sample_rate)
    chunk: SpeechChunk | None = first
    ended_early: ApiError | None = None
    try:
        while chunk is not None:
            if data := await asyncio.to_thread(encoder.feed_bytes, chunk.audio):
                yield data
            try:
                chunk = await anext(chunks, None)
            except WorkerError as exc:
                log.warning("speech ended early, its audio complete up to there: %s", exc.message)
                ended_early = _api_error(exc)
                break
            except Exception as exc:
                # A fault of ours after the 200: the body is cut (the client sees it incomplete).
                raise RuntimeError(f"speech generation failed: {bounded(str(exc))}") from exc
        if data := await asyncio.to_thread(encoder.close_bytes):
            yield data
        if ended_early is not None:
            yield ended_early
    finally:
        await chunks.aclose()  # the client going away stops the generation


async def _audio(payloads: AsyncIterator[bytes | ApiError]) -> AsyncIterator[bytes]:
    """A raw audio body: an early end is the end of the file (the reason is logged, see `_encoded`)."""
    async for data in payloads:
        if isinstance(data, bytes):
            yield data


async def _sse(payloads: AsyncIterator[bytes | ApiError]) -> AsyncIterator[bytes]:
    async for data in payloads:
        if isinstance(data, ApiError):  # OpenAI's error event, in place of speech.audio.done
            event = {"type": "error", **error_body("/v1/audio/speech", data.status, data.message, data.param)}
            yield f"data: {json.dumps(event)}\n\n".encode()
            return
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n".encode()
