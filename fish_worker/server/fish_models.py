"""Fish Audio's TTSRequest, as the official SDK (`fish-audio-sdk`) sends it, and how we read it.

The SDK posts it as msgpack (`Content-Type: application/msgpack`, bytes as msgpack bin) and puts it
in the live WebSocket's `start` event; JSON works too, with reference audio as base64 text. Every
SDK field is accepted (unknown ones are ignored, so newer SDKs keep working); docs/fish-api.md says
which ones this model honours.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fish_worker.audio.reference import base64_audio
from fish_worker.engine.sampling_rules import (
    FISH_REPETITION_PENALTY,
    FISH_TOP_P,
    TEMPERATURE,
    RepetitionPenalty,
    Temperature,
    TopP,
)
from fish_worker.errors import JobInputError
from fish_worker.jobs.output_adjustments import output_adjustments

from fish_worker.audio.postprocess import (
    MAX_SAMPLE_RATE,
    MAX_SPEED,
    MAX_VOLUME_DB,
    MIN_SAMPLE_RATE,
    MIN_SPEED,
    MIN_VOLUME_DB,
    AudioAdjustments,
)

# Fish's format names → our encoders. Fish's pcm is raw 16-bit little-endian mono, like our pcm16.
FISH_FORMATS: dict[str, str] = {"wav": "wav", "pcm": "pcm16", "mp3": "mp3", "opus": "opus"}


class ReferenceAudio(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audio: bytes = Field(
        description="An audio file (WAV, FLAC, MP3, Ogg/Opus, WebM, M4A/AAC); base64 text (or a data: URI) in JSON."
    )
    text: str = Field("", max_length=1000, description="What is said in `audio`.")

    @field_validator("audio", mode="before")
    @classmethod
    def _base64_text(cls, value: Any) -> Any:
        # msgpack carries bytes as bytes; JSON can only carry them as base64 text, read by the
        # rule every door shares. Decoding and the limits come later (fish_worker/audio/reference.py).
        if isinstance(value, str):
            try:
                return base64_audio(value)
            except JobInputError as exc:
                raise ValueError(f"{exc.problem} (audio is bytes: base64 text in JSON)") from None
        return value


class Prosody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="Speed factor; pitch is kept.")
    volume: float = Field(0.0, ge=MIN_VOLUME_DB, le=MAX_VOLUME_DB, description="Gain in dB.")


class FishTTSRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = ""
    chunk_length: Annotated[int, Field(ge=100, le=300)] = 200  # honoured: most characters per sentence
    format: Literal["wav", "pcm", "mp3", "opus"] = "mp3"
    sample_rate: int | None = Field(None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    mp3_bitrate: Literal[64, 128, 192] = 128  # CBR; at 8-24 kHz capped at what MPEG-2/2.5 allow
    opus_bitrate: Literal[-1000, 24, 32, 48, 64] = 32  # -1000: libopus chooses
    references: list[ReferenceAudio] = Field(default_factory=list)
    reference_id: str | None = None
    normalize: bool = True  # ignored: the text is spoken as given
    latency: Literal["normal", "balanced"] = "balanced"  # ignored: audio always streams as early as it can
    prosody: Prosody | None = None
    # The ranges every door has; the defaults Fish Audio documents (engine/sampling_rules.py).
    top_p: TopP = FISH_TOP_P
    temperature: Temperature = TEMPERATURE
    max_new_tokens: int = Field(1024, ge=0)  # per sentence; 0 or over FISH_MAX_TOKENS_LIMIT: that limit
    repetition_penalty: RepetitionPenalty = FISH_REPETITION_PENALTY
    # Accepted and ignored (no counterpart in this model's generation loop).
    min_chunk_length: int = 50
    condition_on_previous_chunks: bool = True  # we always condition on the previous sentence
    early_stop_threshold: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _opus_bitrate_in_kbps(cls, data: Any) -> Any:
        # Fish's opus_bitrate is kbit/s, but clients also send bit/s (LiveKit's plugin: 64000) and send it
        # whatever the format: read bit/s as kbit/s, and ignore it unless the audio is Opus.
        if not isinstance(data, dict) or "opus_bitrate" not in data:
            return data
        if data.get("format", "mp3") != "opus":
            return {key: value for key, value in data.items() if key != "opus_bitrate"}
        bitrate = data["opus_bitrate"]
        if isinstance(bitrate, int) and not isinstance(bitrate, bool) and bitrate >= 1000 and bitrate % 1000 == 0:
            return {**data, "opus_bitrate": bitrate // 1000}
        return data

    @field_validator("references", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def audio_format(self) -> str:
        return FISH_FORMATS[self.format]

    @property
    def bitrate_kbps(self) -> int | None:
        if self.format == "mp3":
            return self.mp3_bitrate
        if self.format == "opus" and self.opus_bitrate > 0:
            return self.opus_bitrate
        return None

    def adjustments(self) -> AudioAdjustments:
        """Speed, volume and sample rate, checked against what the format can carry by the rule every
        door uses (JobInputError naming the field), with its leniency for Fish's clients: a sample_rate
        with opus is ignored, not refused (jobs/output_adjustments.py says why)."""
        prosody = self.prosody or Prosody()
        return output_adjustments(
            self.audio_format, self.sample_rate, prosody.speed, prosody.volume, ignore_opus_rate=True
        )


class FishASRRequest(BaseModel):
    """Fish Audio's ASRRequest (`client.asr.transcribe(audio=..., language=..., include_timestamps=...)`)."""

    model_config = ConfigDict(extra="ignore")

    # bytes in msgpack; base64 text (or a data: URI) in JSON, read by the Transcriber's one decoder.
    audio: bytes | str = Field(description="An audio file (WAV, FLAC, MP3, Ogg/Opus, WebM, M4A/AAC).")
    language: str | None = Field(None, description="A code (en) or a name (english); default: detected.")
    ignore_timestamps: bool | None = Field(None, description="True: the answer's segments are empty.")
