"""What the Fish Audio routes share: a TTSRequest resolved against the service, and its audio encoder.

Calls the service directly (no RunPod job shape): the voice is resolved once per request (or live
session) by the VoiceResolver, sentences go to `TTSService.synthesize`, and each chunk is adjusted
(speed, volume, sample rate) and encoded into one continuous stream in the requested format.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fish_worker.audio.formats import MEDIA_TYPES, StreamEncoder
from fish_worker.audio.postprocess import AudioAdjustments, AudioPostProcessor
from fish_worker.engine.generation import VoicePrompt
from fish_worker.errors import JobInputError, NotFoundError
from fish_worker.server.fish_models import FishTTSRequest, ReferenceAudio
from fish_worker.settings import Settings
from fish_worker.tts.requests import ReferenceClip, SpeechChunk, SynthesisRequest, check_text
from fish_worker.tts.service import TTSService
from fish_worker.tts.voice_resolver import VoiceResolver
from fish_worker.tts.voices import VoiceStore, validate_voice_id

MEDIA_TYPE = {
    "wav": MEDIA_TYPES["wav"],
    "pcm": MEDIA_TYPES["pcm16"],
    "mp3": MEDIA_TYPES["mp3"],
    "opus": MEDIA_TYPES["opus"],
}


@dataclass(frozen=True)
class FishSpeechPlan:
    """A validated request, ready to speak: sampling parameters, voice, output adjustments."""

    request: FishTTSRequest
    speech: SynthesisRequest  # sampling parameters and the resolved voice; sentences come per call
    adjustments: AudioAdjustments

    def synthesize(self, service: TTSService, sentences: Iterable[str], stop: threading.Event) -> Iterator[SpeechChunk]:
        return service.synthesize(dataclasses.replace(self.speech, sentences=sentences), stop)

    def encoder(self, model_rate: int) -> "FishAudioEncoder":
        return FishAudioEncoder(self.request.audio_format, self.adjustments, model_rate, self.request.bitrate_kbps)


def plan_speech(
    request: FishTTSRequest, resolver: VoiceResolver, voices: VoiceStore, settings: Settings
) -> FishSpeechPlan:
    """Check the request against `settings`' limits and resolve its voice (blocking: encodes reference audio).

    `voices`: the caller's tenant's saved voices, where `reference_id` is looked up.
    Raises JobInputError("<field>: ...") for anything the caller must fix; NotFoundError when
    `reference_id` names no voice of the caller's (as for an id never saved).
    """
    if request.text.strip():  # a live session's `start` may carry none: its text comes in events, under its own limits
        try:  # the text limits of every door, sentences cut as this request's chunk_length cuts them
            check_text(request.text, settings, sentence_chars=request.chunk_length)
        except ValueError as exc:
            raise JobInputError("text", str(exc)) from None
    adjustments = request.adjustments()  # JobInputError naming sample_rate or prosody
    if request.reference_id is not None and request.references:
        raise JobInputError("reference_id", "give either reference_id or references, not both")
    max_tokens = request.max_new_tokens
    if max_tokens == 0 or max_tokens > settings.max_tokens_limit:
        max_tokens = settings.max_tokens_limit
    voice: VoicePrompt | None
    if request.reference_id is not None:
        try:
            voice_id = validate_voice_id(request.reference_id)
        except ValueError:  # not echoed: it may be long
            raise JobInputError("reference_id", "is not a voice id (1-64 letters, digits, '_', '.' or '-')") from None
        try:
            voice = resolver.saved_voice(voice_id, voices)
        except NotFoundError as exc:  # e.g. a Fish cloud voice id, which a client library may default to
            raise NotFoundError(
                "reference_id",
                f"{exc.problem} on this server (Fish cloud voices are not here): "
                "list its voices with GET /model, create one with POST /model",
            ) from None
        except JobInputError as exc:  # saved with another model: the same kind, our field name
            raise type(exc)("reference_id", exc.problem) from None
    else:
        voice = encode_references(request.references, resolver)
    # The Fish ranges (checked by FishTTSRequest) are what applies here, and the sampler takes
    # temperature/top_p 0 (near-greedy) as fish-speech does.
    speech = SynthesisRequest(
        text=request.text,
        temperature=request.temperature,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        frames_per_sentence=max_tokens,
        seed=None,
        stream=True,
        voice=voice,
    )
    return FishSpeechPlan(request, speech, adjustments)


def encode_references(
    references: list[ReferenceAudio], resolver: VoiceResolver, field: str = "references"
) -> VoicePrompt | None:
    """One voice prompt from one or more clips (their bytes, as the request carried them): their
    codes and transcripts, in order."""
    prompts = []
    for i, ref in enumerate(references):
        try:  # decoded by the one reader every door uses (fish_worker/audio/reference.py)
            prompts.append(resolver.encode_reference(ReferenceClip(ref.audio, ref.text)))
        except JobInputError as exc:
            raise JobInputError(f"{field}[{i}].audio", exc.problem) from None
    if not prompts:
        return None
    return VoicePrompt(
        text=" ".join(p.text for p in prompts if p.text), codes=torch.cat([p.codes for p in prompts], dim=1)
    )


class FishAudioEncoder:
    """Model audio in, bytes of one continuous file in the request's format out.

    The adjustments restart at each sentence's end: time-stretch and resampler hold back ~20-65 ms,
    which would otherwise wait for the next sentence (in a live session: for the next text).
    Sentences are separate generations, so restarting between them leaves no audible seam.
    """

    def __init__(
        self, audio_format: str, adjustments: AudioAdjustments, model_rate: int, bitrate_kbps: int | None = None
    ) -> None:
        self._adjustments, self._model_rate = adjustments, model_rate
        self.post = AudioPostProcessor(adjustments, model_rate)
        self.stream = StreamEncoder(audio_format, self.post.output_rate, bitrate_kbps)

    @property
    def sample_rate(self) -> int:
        return self.stream.sample_rate

    def feed(self, audio: np.ndarray, end_of_sentence: bool = False) -> bytes:
        adjusted = self.post.process(audio)
        if end_of_sentence and not self._adjustments.is_identity:
            adjusted = np.concatenate([adjusted, self.post.flush()])
            self.post = AudioPostProcessor(self._adjustments, self._model_rate)
        return self.stream.feed_bytes(adjusted)

    def feed_chunk(self, chunk: SpeechChunk) -> bytes:
        return self.feed(chunk.audio, end_of_sentence=chunk.codes is not None)  # the last chunk carries codes

    def close(self) -> bytes:
        return self.stream.feed_bytes(self.post.flush()) + self.stream.close_bytes()
