"""OpenAI-compatible speech: POST /v1/audio/speech (for Open WebUI and the `openai` client).

The body is one complete file in `response_format`, with its true length in its header (soundfile,
PyAV and browsers read it as any file). To get audio while later sentences are still being
synthesised, ask for `stream: true` (the openai client: `extra_body={"stream": True}`): the body is
then one continuous file whose header says "length unknown" (see fish_worker/audio/formats.py), or,
with `stream_format: "sse"`, OpenAI's speech.audio.delta events.
`voice` is a saved voice id; OpenAI's own voice names (alloy, ...) mean the model's default voice.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fish_worker.audio.formats import MEDIA_TYPES
from fish_worker.errors import shown
from fish_worker.jobs.runner import RESULT_ROUTE_KEY
from fish_worker.jobs.inputs import JobInput
from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.errors import ApiError, job_error_status
from fish_worker.server.limiter import JobLimiter, new_job_id
from fish_worker.tenancy import TENANT_KEY
from fish_worker.tts.voices import VoiceStore, validate_voice_id

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)])

OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                           "shimmer", "verse", "marin", "cedar", "default"})
# OpenAI's names → ours. pcm is headerless, so its rate is OpenAI's: 16-bit little-endian at 24 kHz.
_FORMATS = {"mp3": "mp3", "opus": "opus", "flac": "flac", "wav": "wav", "pcm": "pcm16"}
OPENAI_PCM_SAMPLE_RATE = 24_000


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we have no use for

    model: str = Field("fish-speech", description="Accepted and ignored: this server has one model.")
    input: str = Field(description="The text to speak.")
    voice: str = Field("default", description="A saved voice id, or an OpenAI voice name for the default voice.")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, description="0.5 to 2.0 here (OpenAI allows 0.25 to 4.0); pitch is kept.")
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = Field(None, description="Accepted and ignored.")
    # Fish Speech extras (the openai client sends them with extra_body=...).
    seed: int | None = Field(None, description="Fish Speech: sampling seed, for repeatable audio.")
    max_tokens: int | None = Field(None, description="Fish Speech: most codec frames per sentence.")
    stream: bool = Field(False, description="Fish Speech: send audio as it is made (a length-unknown header); "
                                            "stream_format 'sse' always streams.")
    sample_rate: int | None = Field(None, description="Fish Speech: output rate (pcm: 24000, else 44100).")


@router.post("/audio/speech", summary="Speak `input` (OpenAI audio.speech)",
             response_class=StreamingResponse, responses={200: {"content": {"audio/mpeg": {}}}})
async def speech(body: SpeechRequest, request: Request):
    runner: JobLimiter = request.app.state.runner
    audio_format = _FORMATS.get(body.response_format)
    if audio_format is None:
        raise ApiError(400, f"response_format {body.response_format!r} is not supported; use one of "
                            f"{', '.join(_FORMATS)}", param="response_format")
    streamed = body.stream or body.stream_format == "sse"
    job_input: dict[str, Any] = {"message": body.input, "stream": streamed, "audio_format": audio_format,
                                 "speed": body.speed}
    if body.sample_rate is not None or body.response_format == "pcm":
        job_input["sample_rate"] = body.sample_rate or OPENAI_PCM_SAMPLE_RATE
    if "mode" in JobInput.model_fields:
        job_input["mode"] = "tts"  # speak the text as given, even when the worker has a chat model
    job_input.update({k: v for k, v in {"seed": body.seed, "max_tokens": body.max_tokens}.items() if v is not None})
    tenant = tenant_of(request)
    voice_id = _saved_voice(body.voice, runner.service.voices.for_tenant(tenant))
    if voice_id is not None:
        job_input["voice_id"] = voice_id

    admission = runner.admit(tenant)  # 429 when the server or this tenant has too many jobs
    chunks = runner.run({"id": new_job_id(), TENANT_KEY: tenant, "input": job_input, RESULT_ROUTE_KEY: None},
                        admission)
    first = await anext(chunks, None)
    if first is None:
        raise ApiError(500, "internal error: the job produced no output")
    if "error" in first:
        await chunks.aclose()
        message = str(first["error"])
        field = message.split(":", 1)[0]
        raise ApiError(job_error_status(message), message.replace("message:", "input:", 1),
                       param="input" if field == "message" else field)
    if body.stream_format == "sse":
        return StreamingResponse(_sse(first, chunks), media_type="text/event-stream")
    if streamed:
        return StreamingResponse(_payloads(first, chunks), media_type=MEDIA_TYPES[audio_format])
    async for _ in chunks:  # a whole result is one chunk; let the runner finish
        pass
    return Response(base64.b64decode(first["audio"]), media_type=MEDIA_TYPES[audio_format])


def _saved_voice(voice: str, voices: VoiceStore) -> str | None:
    try:
        if voices.exists(validate_voice_id(voice)):
            return voice
    except ValueError:
        pass
    if voice.lower() in OPENAI_VOICES:
        return None
    raise ApiError(400, f"voice: no saved voice named {shown(voice)} (save one with the save_voice action)",
                   param="voice")


async def _payloads(first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for chunk in _with_first(first, chunks):
        if "error" in chunk:
            # Headers went out with 200; ending the body early is all HTTP leaves us.
            raise RuntimeError(f"speech generation failed: {chunk['error']}")
        if chunk.get("audio"):
            yield base64.b64decode(chunk["audio"])


async def _with_first(first, chunks):
    yield first
    async for chunk in chunks:
        yield chunk


async def _sse(first, chunks) -> AsyncIterator[bytes]:
    async for data in _payloads(first, chunks):
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n".encode()
