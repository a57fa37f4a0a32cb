"""OpenAI-compatible speech in: POST /v1/audio/transcriptions (the `openai` client's audio.transcriptions).

A multipart form, as OpenAI's: `file` (any common audio format), `language` (a code, "en", or a name;
default: detected), `response_format` json | text | verbose_json | srt | vtt. `model` is accepted and
ignored (this server has one recognizer, FISH_ASR_*); `prompt` is accepted and ignored (the recognizer is
not given prior text); `temperature` is checked (0 to 1, as OpenAI's) and ignored: Whisper decodes
greedily here. `timestamp_granularities[]` is accepted: verbose_json always has segment times, never
word times. `stream=true` (OpenAI's streamed transcript events) is refused: the transcript comes whole. Errors are OpenAI's `{"error": {...}}`, naming `file` or `language`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from fish_worker.errors import WorkerError
from fish_worker.jobs.inputs import check_encodable
from fish_worker.server.auth import require_api_key
from fish_worker.server.dependencies import Limiter, Transcription
from fish_worker.server.errors import ApiError, api_error
from fish_worker.server.transcript_formats import openai_json, openai_verbose_json, srt_text, vtt_text
from fish_worker.server.transcription import transcribe_request

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)])

# The Transcriber's field names → this form's, in errors.
_FIELDS = {"audio": "file"}


@router.post(
    "/audio/transcriptions",
    summary="Transcribe `file` (OpenAI audio.transcriptions)",
    responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
)
async def transcriptions(
    request: Request,
    limiter: Limiter,
    transcriber: Transcription,
    file: UploadFile = File(description="The audio: WAV, FLAC, MP3, Ogg/Opus, WebM/Opus, M4A/AAC."),
    model: str = Form("whisper-1", description="Accepted and ignored: this server has one recognizer."),
    language: str | None = Form(None, description="A code (en) or a name (english); default: detected."),
    prompt: str | None = Form(None, description="Accepted and ignored."),
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = Form("json"),
    temperature: float = Form(0.0, ge=0.0, le=1.0, description="Accepted and ignored: decoding is greedy."),
    stream: bool = Form(False, description="Only false: the transcript comes whole."),
) -> Response:
    if stream:  # OpenAI's transcript.text.delta events: a client asking for them would misread a whole answer
        raise ApiError(
            400, "stream: streamed transcription is not supported here; the transcript comes whole", param="stream"
        )
    try:  # a form's charset can make lone surrogates (FastAPI lets them through); refused as on every door
        check_encodable({"model": model, "language": language, "prompt": prompt})
        data = await file.read()
        transcript = await transcribe_request(request, limiter, transcriber, data, field="audio", language=language)
    except WorkerError as exc:
        raise api_error(exc, _FIELDS) from None
    if response_format == "json":
        return JSONResponse(openai_json(transcript))
    if response_format == "verbose_json":
        return JSONResponse(openai_verbose_json(transcript))
    if response_format == "srt":
        return PlainTextResponse(srt_text(transcript))
    if response_format == "vtt":
        return PlainTextResponse(vtt_text(transcript), media_type="text/vtt")
    return PlainTextResponse(transcript.text)
