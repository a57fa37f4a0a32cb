"""The job `input` contract (see ../shared/seed-api.md plus the fields README documents)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from fish_worker.audio.formats import AudioFormat
from fish_worker.audio.reference import base64_audio, reference_bytes
from fish_worker.audio.postprocess import (
    MAX_SAMPLE_RATE,
    MAX_SPEED,
    MAX_VOLUME_DB,
    MIN_SAMPLE_RATE,
    MIN_SPEED,
    MIN_VOLUME_DB,
)
from fish_worker.conversations.model import ConversationId
from fish_worker.dialogue.requests import Mode, TurnRequest
from fish_worker.engine.sampling_rules import RepetitionPenalty, Temperature, TopP
from fish_worker.errors import JobInputError, field_path, input_error
from fish_worker.settings import Settings
from fish_worker.tts.requests import SEED_LIMIT, ReferenceClip, check_text, SavedVoiceRef, SynthesisRequest, Voice
from fish_worker.tts.voices import validate_voice_id

# A BCP 47 language tag ("en", "de-DE", "zh-Hant"): only its primary subtag is used (text/segmenter.py).
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$"
# The service's defaults are the job's: one place says what an unset field means.
_DEFAULTS = SynthesisRequest()


class JobInput(BaseModel):
    """A job's `input`. The worker's limits (text length, sentences, max_tokens) are checked against the
    Settings given in the validation context: `parse_job_input(raw, settings)` at every door. One built
    in code (the warm-up job, tests) is trusted and checked for its shape only."""

    # strict: "0.7" is not a float and 1 is not a bool; forbid: a typo'd field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Declared before message: the sentence count that message's check makes is the language's.
    language: str | None = Field(
        None,
        max_length=35,
        pattern=LANGUAGE_PATTERN,
        description="The text's language (e.g. de, ja): where its sentences end. Default: English rules.",
    )
    # Declared before message, whose check needs to know whether it was given.
    audio: str | None = Field(
        None,
        description="Base64 of a voice message (WAV, FLAC, MP3, Ogg/Opus, WebM, M4A), "
        "instead of message: transcribed, and the transcript is the message.",
    )
    # validate_default: its check runs when it is left out too, to require message or audio.
    message: str | None = Field(None, validate_default=True, description="Text to speak (or, in chat mode, reply to).")
    conversation_id: ConversationId | None = None
    temperature: Temperature = _DEFAULTS.temperature
    max_tokens: int = Field(
        _DEFAULTS.frames_per_sentence,
        ge=1,
        description="chat mode: most LLM tokens in the reply; tts mode: most codec frames per sentence (~21.5/s).",
    )
    # Base64 text on the wire, held as the file's bytes (decoded once, by `reference_file`).
    reference_audio: bytes | None = Field(None, description="Base64 WAV of the voice to clone.")
    reference_text: str | None = Field(None, max_length=1000, description="Transcript of reference_audio.")
    stream: bool = False
    top_p: TopP = _DEFAULTS.top_p
    repetition_penalty: RepetitionPenalty = _DEFAULTS.repetition_penalty
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    # None: chat when the worker has a chat backend (FISH_CHAT_MODEL_DIR or FISH_CHAT_BASE_URL), else tts: dialogue/turns.py.
    mode: Literal["chat", "tts"] | None = Field(None, description="chat: reply to message; tts: speak it as is.")
    system_prompt: str | None = Field(
        None, min_length=1, max_length=4000, description="Chat mode: the LLM's instructions."
    )
    audio_format: AudioFormat = Field("float", description="float (the seed's list), pcm16, wav, flac, mp3, opus, aac.")
    voice_id: str | None = Field(None, description="A saved voice (action save_voice), instead of reference_audio.")
    # Output adjustments (fish_worker/jobs/output_adjustments.py); docs/audio-options.md.
    sample_rate: int | None = Field(
        None,
        ge=MIN_SAMPLE_RATE,
        le=MAX_SAMPLE_RATE,
        description="Output rate in Hz; default the model's 44100 (opus: always 48000).",
    )
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="Speaking rate; pitch is kept.")
    volume: float = Field(0.0, ge=MIN_VOLUME_DB, le=MAX_VOLUME_DB, description="Gain in dB.")

    @field_validator("audio")
    @classmethod
    def _audio_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty")
        return value

    @field_validator("message")
    @classmethod
    def _message_has_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:  # left out: the job gives a voice message instead, or nothing to say
            if info.data.get("audio") is None and "audio" in info.data:
                raise ValueError("Field required")
            return None
        if info.data.get("audio") is not None:
            raise ValueError("give either message or audio (a voice message), not both")
        settings = _limits(info)
        if settings is None:  # built in code, without settings: shape only (see the class docstring)
            if not value.strip():
                raise ValueError("must contain text")
            return value
        return check_text(value, settings, info.data.get("language"))

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_capped(cls, value: int, info: ValidationInfo) -> int:
        settings = _limits(info)
        if settings is not None and value > settings.max_tokens_limit:
            raise ValueError(f"must be at most {settings.max_tokens_limit}")
        return value

    @field_validator("reference_audio", mode="before")
    @classmethod
    def _reference_bytes(cls, value: Any, info: ValidationInfo) -> Any:
        settings = _limits(info)
        return reference_file(value, settings.reference_max_bytes if settings is not None else None)

    @field_validator("voice_id")
    @classmethod
    def _voice_id_alone(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Declared after reference_audio/reference_text, so both are already in info.data.
        if value is None:
            return value
        if info.data.get("reference_audio") is not None or info.data.get("reference_text") is not None:
            raise ValueError("give either voice_id or reference_audio/reference_text, not both")
        return validate_voice_id(value)

    # ---- the hand-off to the services: the one place a job's fields become their terms ----------

    @property
    def text(self) -> str:
        """The message to speak or answer (a voice message's job: its transcript, see with_transcript)."""
        if self.message is None:
            raise ValueError("the job's audio has not been transcribed (with_transcript)")
        return self.message

    def with_transcript(self, transcript: str, settings: Settings) -> JobInput:
        """This job with its voice message replaced by its transcript, held to the message's limits
        (a JobInputError naming `audio` when the transcript is empty or over them)."""
        try:
            check_text(transcript, settings, self.language)
        except ValueError as exc:
            problem = "contains no recognisable speech" if not transcript.strip() else f"has a transcript that {exc}"
            raise JobInputError("audio", problem) from None
        return self.model_copy(update={"message": transcript, "audio": None})

    @property
    def voice(self) -> Voice:
        """The job's voice: its saved voice_id, its reference clip, or None."""
        if self.voice_id is not None:
            return SavedVoiceRef(self.voice_id)
        if self.reference_audio is not None:
            return ReferenceClip(self.reference_audio, self.reference_text or "")
        return None

    def to_synthesis(self, **changes: Any) -> SynthesisRequest:
        """The job as the TTS service takes it (tts mode: max_tokens is frames per sentence)."""
        request = SynthesisRequest(
            text=self.text,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            frames_per_sentence=self.max_tokens,
            seed=self.seed,
            stream=self.stream,
            voice=self.voice,
            language=self.language,
        )
        return dataclasses.replace(request, **changes) if changes else request

    def to_turn(self, mode: Mode, chat_frames_per_sentence: int) -> TurnRequest:
        """The job as a conversation turn: in chat mode max_tokens bounds the reply's LLM tokens and
        each spoken sentence gets `chat_frames_per_sentence` frames; in tts mode it is frames per sentence."""
        frames = chat_frames_per_sentence if mode == "chat" else self.max_tokens
        return TurnRequest(
            message=self.text,
            mode=mode,
            speech=self.to_synthesis(text="", frames_per_sentence=frames),
            conversation_id=self.conversation_id,
            reply_tokens=self.max_tokens,
            system_prompt=self.system_prompt,
        )


def _limits(info: ValidationInfo) -> Settings | None:
    return (info.context or {}).get("settings")


def reference_file(value: Any, max_bytes: int | None) -> Any:
    """A reference clip's base64 text → the file's bytes, by the reader every door shares
    (audio/reference.py): the one base64 decode a clip gets. Within `max_bytes` (FISH_REFERENCE_MAX_BYTES)
    when it is known (the VoiceResolver checks the bytes' size again). Bytes and None pass as given."""
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    try:
        raw = base64_audio(value) if max_bytes is None else reference_bytes(value, max_bytes)
    except JobInputError as exc:
        raise ValueError(exc.problem) from None
    if not raw:
        raise ValueError("is empty")
    return raw


def check_encodable(raw: Any, *, brackets: bool = False) -> None:
    """Raise JobInputError naming the first string (value or key, at any depth) that is not valid unicode.

    JSON may carry lone surrogates ("\\ud800"); Python decodes them, but they cannot be written back
    as UTF-8, so a job echoing one could never post its result. They are refused before any work.
    `brackets`: name list items as the Fish doors do ("references[0].text", see field_path).
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _require_utf8(value, field_path(path, brackets=brackets), "")
        elif isinstance(value, dict):
            for key in value:
                if isinstance(key, str):
                    _require_utf8(key, field_path(path + (key,), brackets=brackets), "the field name ")
            stack.extend(reversed([(path + (key,), item) for key, item in value.items()]))  # in input order
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed([(path + (i,), item) for i, item in enumerate(value)]))


def _require_utf8(text: str, field: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JobInputError(field, f"{what}contains invalid unicode (lone surrogate) at position {exc.start}") from None


def parse_job_input(raw: Any, settings: Settings) -> JobInput:
    """Validate a job's `input` within `settings`' limits, raising JobInputError("<field>: <what is wrong>")."""
    if not isinstance(raw, dict):
        raise JobInputError("input", f"must be a JSON object, got {type(raw).__name__}")
    check_encodable(raw)
    try:
        return JobInput.model_validate(raw, context={"settings": settings})
    except ValidationError as exc:
        raise input_error(exc) from None
