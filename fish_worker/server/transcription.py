"""Speech in on the HTTP doors (OpenAI /v1/audio/transcriptions, Fish /v1/asr): one way to run a transcription.

    transcript = await transcribe_request(request, limiter, transcriber, data, field="file", language=None)

It is work like a job's: admitted by the JobLimiter (429 when the server or the tenant is full), run in a
generation slot, the recognizer called on a thread (decoding and Whisper block). A client that hangs up
before its transcript is ready gets nothing (ClientGone, 499); the recognizer call itself cannot be
interrupted (one Whisper `generate`, or one request to a remote server, bounded by FISH_ASR_MAX_SECONDS),
so the slot stays held until it returns, and the next request never finds more calls running than slots.
Errors are the Transcriber's (JobInputError naming `field`, SpeechRecognizerError): each door words them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request

from fish_worker.asr.backend import Transcript
from fish_worker.asr.transcriber import Transcriber
from fish_worker.errors import WorkerError
from fish_worker.jobs.transcription import require_transcriber
from fish_worker.server.auth import tenant_of
from fish_worker.server.disconnect import while_connected
from fish_worker.server.limiter import Admission, JobLimiter


async def transcribe_request(
    request: Request,
    limiter: JobLimiter,
    transcriber: Transcriber | None,
    data: bytes | str,
    *,
    field: str,
    language: str | None,
) -> Transcript:
    """`data` (an audio file's bytes, or its base64 text) transcribed for `request`'s client."""
    ready = require_transcriber(transcriber)  # 400 saying how to configure one, before any admission
    admission = limiter.admit(tenant_of(request))
    work = _in_slot(limiter, admission, lambda: ready.transcribe_bytes(data, field=field, language=language))
    try:
        return await while_connected(request, work)
    except WorkerError as exc:
        # Its traceback runs through frames that hold the tasks which hold it (a reference cycle): kept,
        # it would hold this request's audio (up to a whole body) until a GC pass. Raised without it.
        raise exc.with_traceback(None) from None


async def _in_slot(limiter: JobLimiter, admission: Admission, transcribe: Callable[[], Transcript]) -> Transcript:
    try:
        async with limiter.slot():
            running = asyncio.ensure_future(asyncio.to_thread(transcribe))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # The client left: the thread cannot be stopped, so the slot is held until it returns.
                await asyncio.wait({running})
                if not running.cancelled():
                    running.exception()  # taken, so asyncio does not log it as never retrieved
                raise
    finally:
        admission.release()
