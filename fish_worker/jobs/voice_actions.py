"""Saved-voice management through the job API: `{"action": "save_voice" | "list_voices" | "delete_voice"}`.

Jobs with one of these actions do not synthesise; they return one output dict. Encoding a voice
goes through the VoiceResolver's reference path (same decoding, limits and cache as jobs).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fish_worker.errors import JobInputError, NotFoundError, shown
from fish_worker.errors import input_error
from fish_worker.jobs.inputs import reference_file
from fish_worker.tts.requests import ReferenceClip
from fish_worker.tts.voice_resolver import VoiceResolver
from fish_worker.tts.voices import VoiceInfo, VoiceNotFoundError, VoiceStore, VoiceStoreFullError, validate_voice_id

VOICE_ACTIONS = ("save_voice", "list_voices", "delete_voice")
# list_voices pages: each voice's entry is at most ~1.2 kB (reference_text <= 1000 characters),
# so a full page stays far below RunPod's 1 MB result limits.
LIST_VOICES_MAX_LIMIT = 100


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _WithVoiceId(_Action):
    voice_id: str

    @field_validator("voice_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return validate_voice_id(value)


class SaveVoice(_WithVoiceId):
    action: Literal["save_voice"]
    reference_audio: bytes = Field(description="Base64 WAV of the voice.")  # held as the file's bytes
    reference_text: str = Field("", max_length=1000, description="Transcript of reference_audio.")
    overwrite: bool = True

    @field_validator("reference_audio", mode="before")
    @classmethod
    def _reference_bytes(cls, value: Any, info: ValidationInfo) -> Any:
        return reference_file(value, (info.context or {}).get("max_bytes"))


class ListVoices(_Action):
    action: Literal["list_voices"]
    limit: int = Field(LIST_VOICES_MAX_LIMIT, ge=1, le=LIST_VOICES_MAX_LIMIT, description="Most voices returned.")
    cursor: str | None = Field(None, description="The previous page's next_cursor: voices after it are listed.")

    @field_validator("cursor")
    @classmethod
    def _cursor_is_a_voice_id(cls, value: str | None) -> str | None:
        try:
            return None if value is None else validate_voice_id(value)
        except ValueError:
            raise ValueError("is not a next_cursor from list_voices (a voice_id)") from None


class DeleteVoice(_WithVoiceId):
    action: Literal["delete_voice"]


_MODELS: dict[str, type[SaveVoice | ListVoices | DeleteVoice]] = {
    "save_voice": SaveVoice,
    "list_voices": ListVoices,
    "delete_voice": DeleteVoice,
}


def is_voice_action(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("action") in VOICE_ACTIONS


async def run_voice_action(
    raw: dict[str, Any],
    resolver: VoiceResolver,
    voices: VoiceStore | None = None,
) -> dict[str, Any]:
    """The action's output, on `voices` (a tenant's store; default the resolver's); raises
    JobInputError for bad input, NotFoundError for an unknown voice."""
    voices = voices or resolver.store
    try:
        action = _MODELS[raw["action"]].model_validate(raw, context={"max_bytes": resolver.max_bytes})
    except ValidationError as exc:
        raise input_error(exc) from None
    if isinstance(action, SaveVoice):
        return {"voice": _describe(await asyncio.to_thread(_save, action, resolver, voices))}
    if isinstance(action, ListVoices):
        page, next_cursor = await asyncio.to_thread(voices.page, action.limit, action.cursor)
        return {"voices": [_describe(v) for v in page], "next_cursor": next_cursor}
    try:
        await asyncio.to_thread(voices.delete, action.voice_id)
    except VoiceNotFoundError:
        raise NotFoundError("voice_id", f"no saved voice named {shown(action.voice_id)}") from None
    return {"deleted": action.voice_id}


def _save(action: SaveVoice, resolver: VoiceResolver, voices: VoiceStore) -> VoiceInfo:
    if not action.overwrite and voices.exists(action.voice_id):
        raise JobInputError("voice_id", f"a voice named {shown(action.voice_id)} exists and overwrite is false")
    # JobInputError if the audio is unusable
    prompt = resolver.encode_reference(ReferenceClip(action.reference_audio, action.reference_text))
    try:
        return voices.save(action.voice_id, prompt.codes.numpy(), prompt.text)
    except VoiceStoreFullError as exc:
        raise JobInputError("voice_id", f"cannot save a new voice: {exc} (or overwrite an existing voice_id)") from None


def _describe(info: VoiceInfo) -> dict[str, Any]:
    return {
        "voice_id": info.voice_id,
        "reference_text": info.text,
        "created_at": info.created_at,
        "num_frames": info.num_frames,
    }
