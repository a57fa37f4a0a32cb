"""Fish Audio's HTTP API: POST /v1/tts and the voice models at /model (for `fish-audio-sdk`).

/v1/tts streams one audio file in the request's format as sentences are synthesised (chunked
transfer); it is admitted and holds a generation slot like a job of the other doors (limiter.py).
Voices are the caller's tenant's saved voices (fish_worker/tts/voices.py) in Fish's "model" shape; a
voice's `_id` is its voice_id, usable as `reference_id` here and as `voice_id` on the other doors.
Another tenant's voice is 404 everywhere, as a voice never saved.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any

import ormsgpack
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from fish_worker.errors import JobInputError, WorkerError, input_error
from fish_worker.jobs.inputs import check_encodable
from fish_worker.server.auth import require_api_key, tenant_of
from fish_worker.server.dependencies import AppSettings, Limiter, Speech
from fish_worker.server.disconnect import while_connected
from fish_worker.server.errors import ApiError, api_error, status_of
from fish_worker.server.fish_models import FishTTSRequest, ReferenceAudio
from fish_worker.server.fish_synthesis import MEDIA_TYPE, FishSpeechPlan, encode_references, plan_speech
from fish_worker.settings import Settings
from fish_worker.tts.voice_resolver import VoiceResolver
from fish_worker.text.sentences import split_sentences
from fish_worker.tts.voices import VoiceInfo, VoiceNotFoundError, VoiceStore, validate_voice_id

log = logging.getLogger(__name__)

router = APIRouter(tags=["Fish Audio-compatible"], dependencies=[Depends(require_api_key)])


@router.post(
    "/v1/tts",
    summary="Speak `text` (Fish Audio TTSRequest, msgpack or JSON)",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}}}},
)
async def tts(request: Request, limiter: Limiter, service: Speech, settings: AppSettings):
    # The body's size and time are bounded by BodyLimitMiddleware (FISH_MAX_BODY_BYTES) as it arrives.
    fish_request = parse_tts_request(await request.body(), request.headers.get("content-type", ""))
    tenant = tenant_of(request)
    admission = limiter.admit(tenant)  # 429 when the server or this tenant has too many jobs
    try:
        plan = await _plan(fish_request, service.voices, service.voices.store.for_tenant(tenant), settings)
        sentences = split_sentences(fish_request.text, fish_request.chunk_length)
        if not sentences:
            raise ApiError(400, "text: must contain text", param="text")
    except BaseException:
        admission.release()
        raise
    chunks = limiter.speech(admission, lambda stop: plan.synthesize(service, sentences, stop))
    encoder = plan.encoder(service.sample_rate)
    # The first chunk is awaited before answering, so a bad voice or text is a 400, not a cut stream.
    try:
        first = await while_connected(request, anext(chunks, None), chunks.aclose)  # hanging up stops it
    except WorkerError as exc:
        await chunks.aclose()
        raise _api_error(exc) from None
    if first is None:
        raise ApiError(400, "text: no audio was generated for this text", param="text")
    return StreamingResponse(_encoded(first, chunks, encoder), media_type=MEDIA_TYPE[fish_request.format])


def parse_tts_request(body: bytes, content_type: str) -> FishTTSRequest:
    data = decode_fish_body(body, content_type, "TTSRequest")
    try:
        fish_request = FishTTSRequest.model_validate(data)
    except ValidationError as exc:
        raise api_error(input_error(exc, brackets=True, whole="body")) from None  # "references[0].audio: ..."
    if not fish_request.text.strip():
        raise ApiError(400, "text: must contain text", param="text")
    return fish_request


def decode_fish_body(body: bytes, content_type: str, shape: str) -> dict[str, Any]:
    """A Fish request's body (msgpack or JSON by its Content-Type) as a dict, its strings valid unicode."""
    kind = "msgpack" if "msgpack" in content_type else "JSON"
    try:
        data = ormsgpack.unpackb(body) if "msgpack" in content_type else json.loads(body)
    except RecursionError:  # json's; ormsgpack says ValueError at its own depth limit
        raise ApiError(400, f"body: is not valid {kind}: nested too deep", param="body") from None
    except (ormsgpack.MsgpackDecodeError, ValueError):
        raise ApiError(400, f"body: is not valid {kind}", param="body") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body: must be a {shape} object", param="body")
    try:
        check_encodable(data, brackets=True)  # lone surrogates, refused as on every door
    except JobInputError as exc:
        raise api_error(exc) from None
    return data


async def _plan(
    fish_request: FishTTSRequest, resolver: VoiceResolver, voices: VoiceStore, settings: Settings
) -> FishSpeechPlan:
    try:
        return await asyncio.to_thread(plan_speech, fish_request, resolver, voices, settings)
    except WorkerError as exc:
        raise _api_error(exc) from None


# The service's field names → the TTSRequest's, in errors.
_FIELDS = {"reference_audio": "references", "message": "text", "voice_id": "reference_id"}


def _api_error(exc: WorkerError) -> ApiError:
    return api_error(exc, _FIELDS)


async def _encoded(first, chunks, encoder) -> AsyncIterator[bytes]:
    async with aclosing(chunks):  # the client going away closes this, which stops the generation
        chunk = first
        while chunk is not None:
            if data := await asyncio.to_thread(encoder.feed_chunk, chunk):
                yield data
            try:
                chunk = await anext(chunks, None)
            except WorkerError as exc:
                # A limit met mid-stream (FISH_MAX_JOB_FRAMES): the status went out with the headers, so
                # the audio so far ends as a complete file (docs/fish-api.md); the reason goes to the log.
                log.warning("Fish /v1/tts ended early, its audio complete up to there: %s", exc.message)
                break
            except Exception as exc:
                # A fault of ours: the body is cut (the client sees it incomplete), the traceback logged.
                log.error("Fish /v1/tts generation failed: %s", exc)
                raise
        if data := await asyncio.to_thread(encoder.close):
            yield data


# ---- voices ("models" in Fish's API) ------------------------------------------------------------


def _tenant_voices(request: Request, tts: Speech) -> VoiceStore:
    """The caller's tenant's saved voices: another tenant's are not there."""
    return tts.voices.store.for_tenant(tenant_of(request))


TenantVoices = Annotated[VoiceStore, Depends(_tenant_voices)]


@router.get("/model", summary="List saved voices (Fish Audio voices.list)")
async def list_voices(
    store: TenantVoices,
    page_size: int = Query(10, ge=1, le=100),
    page_number: int = Query(1, ge=1),
    title: str | None = None,
    sort_by: str = "task_count",
) -> dict[str, Any]:
    voices = await asyncio.to_thread(store.list)
    if title:
        voices = [v for v in voices if title.lower() in _title(v).lower()]
    if sort_by == "created_at":
        voices.sort(key=lambda v: v.created_at, reverse=True)
    start = (page_number - 1) * page_size
    return {"total": len(voices), "items": [fish_voice(v) for v in voices[start : start + page_size]]}


@router.get("/model/{voice_id}", summary="Get a saved voice (Fish Audio voices.get)")
async def get_voice(voice_id: str, store: TenantVoices) -> dict[str, Any]:
    try:
        return fish_voice((await asyncio.to_thread(store.load, _voice_id(voice_id))).info)
    except VoiceNotFoundError:
        raise _no_voice(voice_id) from None


@router.delete("/model/{voice_id}", summary="Delete a saved voice (Fish Audio voices.delete)")
async def delete_voice(voice_id: str, store: TenantVoices) -> Response:
    try:
        await asyncio.to_thread(store.delete, _voice_id(voice_id))
    except VoiceNotFoundError:
        raise _no_voice(voice_id) from None
    return Response(status_code=200)


@router.post("/model", summary="Create a voice from audio + transcripts (Fish Audio voices.create)")
async def create_voice(
    request: Request,
    limiter: Limiter,
    tts: Speech,
    store: TenantVoices,
    title: str = Form(..., min_length=1, max_length=200),
    voices: list[UploadFile] = File(..., description="One or more clips of the voice."),
    texts: list[str] = Form([], description="Transcript of each clip, in order."),
    description: str = Form(""),  # accepted, not stored
    visibility: str = Form("private"),  # accepted, ignored: voices are private to this server
    voice_type: str = Form("tts", alias="type"),
    train_mode: str = Form("fast"),  # accepted, ignored: a voice is its clips' codec tokens, no training
    tags: list[str] = Form([]),  # accepted, not stored
    enhance_audio_quality: bool = Form(True),  # accepted, ignored
    cover_image: UploadFile | None = File(None),  # accepted, not stored
) -> dict[str, Any]:
    if voice_type != "tts":
        raise ApiError(400, "type: only 'tts' voices can be created", param="type")
    if len(texts) > len(voices):
        raise ApiError(400, "texts: more transcripts than voices", param="texts")
    try:  # a form's charset can make lone surrogates (FastAPI lets them through); refused as on every door
        check_encodable(
            {
                "title": title,
                "texts": texts,
                "description": description,
                "visibility": visibility,
                "train_mode": train_mode,
                "tags": tags,
            },
            brackets=True,
        )
    except JobInputError as exc:
        raise api_error(exc) from None
    clips = [
        ReferenceAudio(audio=await f.read(), text=texts[i] if i < len(texts) else "") for i, f in enumerate(voices)
    ]
    voice_id = uuid.uuid4().hex  # Fish's ids are 32 hex digits too

    def save() -> VoiceInfo:
        prompt = encode_references(clips, tts.voices, field="voices")
        assert prompt is not None, "voices is a required list: FastAPI refused a form without a clip"
        return store.save(voice_id, prompt.codes.numpy(), prompt.text, overwrite=False, title=title)

    admission = limiter.admit(tenant_of(request))  # encoding the clips is work like a save_voice job's
    try:
        info = await asyncio.to_thread(save)
    except WorkerError as exc:
        raise ApiError(status_of(exc.kind), exc.message, param=exc.field) from None
    finally:
        admission.release()
    return fish_voice(info)


def fish_voice(info: VoiceInfo) -> dict[str, Any]:
    """A saved voice in Fish's model shape; fields with no counterpart here get neutral values."""
    created = datetime.datetime.fromtimestamp(info.created_at, datetime.timezone.utc).isoformat()
    return {
        "_id": info.voice_id,
        "type": "tts",
        "title": _title(info),
        "description": "",
        "cover_image": "",
        "train_mode": "fast",
        "state": "trained",
        "tags": [],
        "samples": [{"title": _title(info), "text": info.text, "task_id": info.voice_id, "audio": ""}],
        "created_at": created,
        "updated_at": created,
        "languages": [],
        "visibility": "private",
        "lock_visibility": False,
        "like_count": 0,
        "mark_count": 0,
        "shared_count": 0,
        "task_count": 0,
        "liked": False,
        "marked": False,
        "author": {"_id": "self", "nickname": "self-hosted", "avatar": ""},
    }


def _title(info: VoiceInfo) -> str:
    return info.title or info.voice_id  # voices saved through save_voice have no title


def _voice_id(voice_id: str) -> str:
    try:
        return validate_voice_id(voice_id)
    except ValueError:
        raise _no_voice(voice_id) from None


def _no_voice(voice_id: str) -> ApiError:
    return ApiError(404, f"no voice with id {voice_id[:100]!r}", param="voice_id")
