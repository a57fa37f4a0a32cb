"""Voice resolution: a request's voice (a saved voice, a reference clip, or a prompt) → a VoicePrompt.

A reference clip's file is decoded once, by the reader every door shares (audio/reference.py), and
encoded to codec tokens, which are cached by the file's bytes; a saved voice's tokens come from its
VoiceStore (the default one, or the tenant's store the caller passes).
"""

from __future__ import annotations

import logging

import torch

from fish_worker.audio.reference import decode_audio_file, reference_bytes
from fish_worker.engine.codec import Codec
from fish_worker.engine.generation import VoicePrompt
from fish_worker.errors import JobInputError, NotFoundError, shown
from fish_worker.tts.requests import ReferenceClip, SavedVoiceRef, Voice
from fish_worker.tts.voice_cache import VoiceCodesCache
from fish_worker.tts.voices import VoiceNotFoundError, VoiceStore

log = logging.getLogger(__name__)


class VoiceResolver:
    """`store`: the default namespace's saved voices. `max_bytes`, `max_seconds`: a clip's limits
    (FISH_REFERENCE_MAX_BYTES, FISH_REFERENCE_MAX_SECONDS)."""

    def __init__(
        self,
        codec: Codec,
        num_codebooks: int,
        store: VoiceStore,
        cache: VoiceCodesCache,
        max_bytes: int,
        max_seconds: float,
    ) -> None:
        self.codec = codec
        self.num_codebooks = num_codebooks
        self.store = store
        self.cache = cache
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds

    def resolve(self, voice: Voice, store: VoiceStore | None = None) -> VoicePrompt | None:
        """The prompt for a request's `voice`: a saved voice (looked up in `store`, default this
        resolver's), an encoded clip, the prompt itself, or None."""
        if isinstance(voice, SavedVoiceRef):
            return self.saved_voice(voice.voice_id, store)
        if isinstance(voice, ReferenceClip):
            return self.encode_reference(voice)
        return voice

    def encode_reference(self, clip: ReferenceClip) -> VoicePrompt:
        """A voice prompt from a clip's audio file and transcript (its codes cached by the file's
        bytes); JobInputError("reference_audio: ...") when the audio is unusable."""
        raw = reference_bytes(clip.audio, self.max_bytes)  # bytes: only their size is checked
        key = VoiceCodesCache.key(raw)
        codes = self.cache.get(key)
        if codes is None:
            audio = decode_audio_file(raw, self.codec.sample_rate, self.max_seconds)
            codes = self.codec.encode(audio)
            self.cache.put(key, codes)
            log.info("encoded reference voice: %.1f s → %d frames", len(audio) / self.codec.sample_rate, codes.shape[1])
        return VoicePrompt(text=clip.text, codes=codes)

    def saved_voice(self, voice_id: str, store: VoiceStore | None = None) -> VoicePrompt:
        """The saved voice's prompt; NotFoundError (voice_id) when the store has no such voice."""
        try:
            voice = (store or self.store).load(voice_id)
        except VoiceNotFoundError:
            raise NotFoundError("voice_id", f"no saved voice named {shown(voice_id)}") from None
        if voice.tokens.shape[0] != self.num_codebooks:  # saved with another model
            raise JobInputError("voice_id", f"{shown(voice_id)} was saved with a different model; save it again")
        return VoicePrompt(text=voice.text, codes=torch.from_numpy(voice.tokens).to(torch.int))
