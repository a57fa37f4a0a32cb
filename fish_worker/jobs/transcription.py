"""Speech in through the job API: a job's `audio` (a voice message) and `{"action": "transcribe"}`.

    {"audio": "<base64>", ...}                          transcribed; the transcript is the job's message
    {"action": "transcribe", "audio": "<base64>", "language": "en"}
        → {"transcript": "...", "language": "en", "duration_s": 3.2,
           "segments": [{"start_s": 0.0, "end_s": 1.4, "text": "..."}, ...]}

Both go through the worker's one Transcriber (asr/transcriber.py: the one input decoder, the
FISH_ASR_* limits); a worker without a recognizer refuses them with a 400 naming `audio`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fish_worker.asr.backend import Transcript
from fish_worker.async_bridge import call_in_thread
from fish_worker.asr.transcriber import Transcriber
from fish_worker.errors import JobInputError, input_error

TRANSCRIBE_ACTION = "transcribe"
NOT_CONFIGURED = "speech recognition is not configured: set FISH_ASR_MODEL_DIR or FISH_ASR_BASE_URL"


class TranscribeAction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    action: Literal["transcribe"]
    audio: str = Field(min_length=1, description="Base64 of the voice message (WAV, FLAC, MP3, Ogg/Opus, WebM, M4A).")
    language: str | None = Field(
        None, max_length=35, description="Its language, a code (en) or a name (english); default: detected."
    )


def is_transcribe_action(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("action") == TRANSCRIBE_ACTION


def require_transcriber(transcriber: Transcriber | None) -> Transcriber:
    if transcriber is None:
        raise JobInputError("audio", NOT_CONFIGURED)
    return transcriber


async def transcribe(transcriber: Transcriber | None, audio: str, language: str | None) -> Transcript:
    """The voice message's transcript, off the event loop (decoding and the model block). A job cancelled
    meanwhile stops the recognizer (at its next decoding step) and waits for it to end."""
    ready = require_transcriber(transcriber)
    return await call_in_thread(lambda stop: ready.transcribe_bytes(audio, field="audio", language=language, stop=stop))


async def run_transcribe_action(raw: dict[str, Any], transcriber: Transcriber | None) -> dict[str, Any]:
    try:
        action = TranscribeAction.model_validate(raw)
    except ValidationError as exc:
        raise input_error(exc) from None
    return transcript_output(await transcribe(transcriber, action.audio, action.language))


def transcript_output(transcript: Transcript) -> dict[str, Any]:
    return {
        "transcript": transcript.text,
        "language": transcript.language,
        "duration_s": transcript.duration_s,
        "segments": [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in transcript.segments],
    }
