"""What the TTS service takes and gives, in its own terms (no wire model, no torch at import).

Each door builds one `SynthesisRequest` from its own wire model, in one place:

    RunPod / seed job   fish_worker/jobs/inputs.py                    JobInput.to_synthesis()
    chat turns          fish_worker/jobs/inputs.py                    JobInput.to_turn() → TurnRequest.speech
    Fish /v1/tts, live  fish_worker/server/fish_synthesis.py          plan_speech()
    OpenAI speech       fish_worker/server/routers/openai_speech.py   synthesis_request()
    saving a voice      VoiceResolver.encode_reference(clip)          (no request: just the clip)

and `TTSService.synthesize(request)` yields `SpeechChunk`s (tts/service.py); the voice is resolved
by tts/voice_resolver.py, and tts/loader.py builds both from the settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from fish_worker.settings import Settings
from fish_worker.text.sentences import split_sentences

# Seeds are returned to clients; JavaScript numbers are exact only below 2**53.
SEED_LIMIT = 2**53

if TYPE_CHECKING:  # the engine's types; importing them would load torch
    import torch

    from fish_worker.engine.generation import VoicePrompt


def check_text(text: str, settings: Settings, language: str | None = None) -> str:
    """`text` if the service will speak it under `settings`' limits, else ValueError saying why
    (`language`: whose rules cut it into sentences, as the service will)."""
    if not text.strip():
        raise ValueError("must contain text")
    if len(text) > settings.max_text_chars:
        raise ValueError(f"is {len(text)} characters, the limit is {settings.max_text_chars}")
    sentences = len(split_sentences(text, settings.sentence_max_chars, language))
    if sentences > settings.max_sentences:
        raise ValueError(f"has {sentences} sentences, the limit is {settings.max_sentences} (FISH_MAX_SENTENCES)")
    return text


@dataclass(frozen=True)
class ReferenceClip:
    """A voice to clone: an audio file's bytes, as the door read them (base64 text is decoded there,
    once), and its transcript. Decoded and encoded to codec tokens by the VoiceResolver, cached."""

    audio: bytes = field(repr=False)  # up to FISH_REFERENCE_MAX_BYTES: kept out of reprs and logs
    text: str = ""


@dataclass(frozen=True)
class SavedVoiceRef:
    """A saved voice, looked up by id in the request's voice store (a tenant's)."""

    voice_id: str


# A resolved prompt (a conversation's kept voice, Fish references), a clip, a saved voice, or none.
Voice = Union["VoicePrompt", ReferenceClip, SavedVoiceRef, None]


@dataclass(frozen=True)
class SynthesisRequest:
    """One synthesis: the text (or its sentences), sampling, voice and streaming."""

    text: str = ""  # split into sentences by the service, unless `sentences` is given
    # Replaces `text`; may be lazy (a chat reply still being written, a live session's text).
    sentences: Iterable[str] | None = None
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    frames_per_sentence: int = 1000  # codec frames (~21.5 a second) one sentence may take
    seed: int | None = None  # None: a fresh one is drawn (and reported on each chunk)
    stream: bool = False  # decode each sentence in windows while it is generated
    voice: Voice = None
    language: str | None = None  # whose rules cut `text` into sentences (text/segmenter.py); None: English


@dataclass(frozen=True)
class SpeechChunk:
    index: int  # sentence number within the request
    text: str  # the text this audio speaks
    audio: np.ndarray  # mono float32 at sample_rate
    sample_rate: int
    seed: int  # the request's seed (given or drawn), to reproduce it
    # The sentence's codec tokens [num_codebooks, frames] on the CPU: a conversation keeps its first
    # reply's as its voice. Streamed sentences come in several chunks: only the last one has codes.
    codes: "torch.Tensor | None" = None
    sentence: str | None = None  # the whole sentence, on the chunk that carries `codes`
