"""Fish Audio's speech in: POST /v1/asr (fish-audio-sdk's `client.asr.transcribe`, the older SDK's `asr`).

The body is an ASRRequest in msgpack (as the SDKs send it: `audio` as bytes) or JSON (`audio` as base64
text or a data: URI): `audio`, `language` (a code or a name; default: detected), `ignore_timestamps`.
The answer is Fish's ASRResponse: `text`, `duration` in milliseconds, `segments` (text, start and end in
seconds; empty with ignore_timestamps). Work and errors as on every door (server/transcription.py):
admitted, in a generation slot, errors in Fish's `{"status", "message"}` naming `audio` or `language`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from fish_worker.errors import WorkerError, input_error
from fish_worker.server.auth import require_api_key
from fish_worker.server.dependencies import Limiter, Transcription
from fish_worker.server.errors import api_error
from fish_worker.server.fish_models import FishASRRequest
from fish_worker.server.routers.fish_tts import decode_fish_body
from fish_worker.server.transcript_formats import fish_asr_response
from fish_worker.server.transcription import transcribe_request

router = APIRouter(tags=["Fish Audio-compatible"], dependencies=[Depends(require_api_key)])


@router.post("/v1/asr", summary="Transcribe `audio` (Fish Audio ASRRequest, msgpack or JSON)")
async def asr(request: Request, limiter: Limiter, transcriber: Transcription) -> dict[str, Any]:
    # The body's size and time are bounded by BodyLimitMiddleware (FISH_MAX_BODY_BYTES) as it arrives.
    data = decode_fish_body(await request.body(), request.headers.get("content-type", ""), "ASRRequest")
    try:
        asr_request = FishASRRequest.model_validate(data)
    except ValidationError as exc:
        raise api_error(input_error(exc, brackets=True, whole="body")) from None
    try:
        transcript = await transcribe_request(
            request, limiter, transcriber, asr_request.audio, field="audio", language=asr_request.language
        )
    except WorkerError as exc:
        raise api_error(exc) from None
    return fish_asr_response(transcript, timestamps=not asr_request.ignore_timestamps)
