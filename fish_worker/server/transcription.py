"""Speech in on the HTTP doors (OpenAI /v1/audio/transcriptions, Fish /v1/asr): one way to run a transcription.

    transcript = await transcribe_request(request, limiter, transcriber, data, field="file", language=None)

It is work like a job's: admitted by the JobLimiter (429 when the server or the tenant is full), run in a
generation slot, the recognizer called on a thread (decoding and Whisper block). A client that hangs up
before its transcript is ready gets nothing (ClientGone, 499), and its recognizer call is stopped (the
local Whisper at its next decoding step; a request already sent to a remote server runs to its answer);
the slot is given back once that call has ended, so the next request never finds more calls running
than slots.
Errors are the Transcriber's (JobInputError naming `field`, SpeechRecognizerError): each door words them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.requests import Request

from fish_worker.asr.backend import Transcript
from fish_worker.asr.transcriber import Transcriber
from fish_worker.async_bridge import call_in_thread
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
    work = _in_slot(
        limiter, admission, lambda stop: ready.transcribe_bytes(data, field=field, language=language, stop=stop)
    )
    return await while_connected(request, work)


async def _in_slot(
    limiter: JobLimiter, admission: Admission, transcribe: Callable[[threading.Event], Transcript]
) -> Transcript:
    try:
        async with limiter.slot():
            # The client leaving cancels this: the call is stopped, and the slot held until it has ended.
            return await call_in_thread(transcribe)
    finally:
        admission.release()
