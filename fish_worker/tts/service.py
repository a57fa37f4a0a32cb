"""Speech synthesis for one validated request: sentences → codec tokens → audio chunks."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fish_worker.audio.reference import decode_reference_audio
from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.checkpoint import load_models
from fish_worker.engine.codec import Codec
from fish_worker.engine.incremental_decode import IncrementalDecoder
from fish_worker.engine.generation import PromptTooLongError, SemanticGenerator, VoicePrompt
from fish_worker.engine.sampling import SamplingParams
from fish_worker.errors import JobInputError, shown
from fish_worker.jobs.inputs import SEED_LIMIT, JobInput
from fish_worker.settings import Settings
from fish_worker.text.sentences import split_sentences
from fish_worker.tts.voice_cache import VoiceCodesCache
from fish_worker.tts.voices import VoiceNotFoundError, VoiceStore

log = logging.getLogger(__name__)

# Not the caller's fault and no field to blame: the model sampled its end token before any audio.
NO_AUDIO_ERROR = "the model produced no audio for this text (it ended at once); try another seed or wording"


def draw_seed() -> int:
    """A fresh random seed that JavaScript clients can send back exactly (below 2**53)."""
    return secrets.randbelow(SEED_LIMIT)


class JobFrameLimitError(JobInputError):
    """The job's sentences together reached FISH_MAX_JOB_FRAMES before the text was spoken."""

    def __init__(self, limit: int, seconds: float):
        super().__init__("message", f"the speech reached the per-job limit of {limit} codec frames "
                                    f"(~{seconds:.0f} s, FISH_MAX_JOB_FRAMES) before its end; send shorter text")


@dataclass(frozen=True)
class SpeechChunk:
    index: int  # sentence number within the request
    text: str  # the text this audio speaks
    audio: np.ndarray  # mono float32 at sample_rate
    sample_rate: int
    seed: int  # the request's seed (given or drawn), to reproduce it
    # The sentence's codec tokens [num_codebooks, frames] on the CPU: a conversation keeps its first
    # reply's as its voice. Streamed sentences come in several chunks: only the last one has codes.
    codes: torch.Tensor | None = None
    sentence: str | None = None  # the whole sentence, on the chunk that carries `codes`


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class TTSService:
    def __init__(self, settings: Settings, generator: BatchScheduler | SemanticGenerator, codec: Codec):
        self.settings = settings
        self.generator = generator
        self.codec = codec
        self.voice_cache = VoiceCodesCache(settings.reference_cache_size)
        self.voices = VoiceStore(settings.storage.voices_dir, settings.storage.max_voices)

    @classmethod
    def load(cls, settings: Settings) -> "TTSService":
        started = time.perf_counter()
        device = resolve_device(settings.device)
        precision = resolve_precision(settings.precision, device)
        models = load_models(settings.checkpoint_dir, device, precision)
        # Concurrent requests share decoding steps (one engine thread) instead of queueing on a lock.
        generator = BatchScheduler(SemanticGenerator(models.text2semantic, device), settings.max_concurrency,
                                   compile=settings.compile)
        service = cls(settings, generator, Codec(models.codec, device, precision))
        log.info("models loaded from %s on %s/%s in %.1f s", settings.checkpoint_dir, device, precision,
                 time.perf_counter() - started)
        return service

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def warmup(self) -> None:
        started = time.perf_counter()
        for _ in self.synthesize(JobInput(message="Warm up.", max_tokens=8, seed=0)):
            pass
        log.info("warm-up synthesis took %.2f s", time.perf_counter() - started)

    def reference_voice(self, request: JobInput, voices: VoiceStore | None = None) -> VoicePrompt | None:
        """The request's voice: its saved `voice_id` (looked up in `voices`, default this service's
        store) or its `reference_audio`; None when it has neither."""
        if request.voice_id is not None:
            return self.saved_voice(request.voice_id, voices)
        if request.reference_audio is None:
            return None
        key = VoiceCodesCache.key(request.reference_audio)
        codes = self.voice_cache.get(key)
        if codes is None:
            audio = decode_reference_audio(
                request.reference_audio, self.sample_rate,
                self.settings.reference_max_seconds, self.settings.reference_max_bytes,
            )
            codes = self.codec.encode(audio)
            self.voice_cache.put(key, codes)
            log.info("encoded reference voice: %.1f s → %d frames", len(audio) / self.sample_rate, codes.shape[1])
        return VoicePrompt(text=request.reference_text or "", codes=codes)

    def saved_voice(self, voice_id: str, voices: VoiceStore | None = None) -> VoicePrompt:
        try:
            voice = (voices or self.voices).load(voice_id)
        except VoiceNotFoundError:
            raise JobInputError("voice_id", f"no saved voice named {shown(voice_id)}") from None
        if voice.tokens.shape[0] != self.generator.num_codebooks:  # saved with another model
            raise JobInputError("voice_id", f"{shown(voice_id)} was saved with a different model; save it again")
        return VoicePrompt(text=voice.text, codes=torch.from_numpy(voice.tokens).to(torch.int))

    def synthesize(
        self,
        request: JobInput,
        stop: threading.Event | None = None,
        *,
        voice: VoicePrompt | None = None,
        sentences: Iterable[str] | None = None,
        voices: VoiceStore | None = None,
    ) -> Iterator[SpeechChunk]:
        """Yield one chunk per sentence, in order; stops early when `stop` is set.

        `voice` (a conversation's) replaces the request's reference. `sentences` replaces the split
        `request.message`; it may be lazy (a chat reply still being written): each is pulled when due.
        `voices`: where the request's `voice_id` is looked up (a tenant's store); default this service's.
        All sentences together get at most `settings.max_job_frames` frames: a job that needs more
        raises JobFrameLimitError once they are spent (streamed jobs have sent the audio up to there).
        """
        if sentences is None:
            sentences = split_sentences(request.message, self.settings.sentence_max_chars)
        reference = voice if voice is not None else self.reference_voice(request, voices)
        seed = request.seed if request.seed is not None else draw_seed()
        rng = torch.Generator(device=self.generator.device).manual_seed(seed)
        frames_left = self.settings.max_job_frames

        previous: VoicePrompt | None = None
        for index, sentence in enumerate(sentences):
            if stop is not None and stop.is_set():
                return
            if frames_left <= 0:
                raise self._frame_limit_error()
            # The job's remaining frames bound this sentence too (the same tokens, only fewer of them).
            budget = min(request.max_tokens, frames_left)
            params = SamplingParams(request.temperature, request.top_p, request.repetition_penalty, budget)
            # Condition on the reference and on the previous sentence, so every sentence keeps one voice.
            voices = [v for v in (reference, previous) if v is not None]
            started = time.perf_counter()
            # Streamed: audio leaves in windows while the sentence is still being generated; the
            # sentence's text rides on its first chunk, continuation chunks carry "".
            decoder = IncrementalDecoder(self.codec, self.settings.stream_first_frames,
                                         self.settings.stream_context_frames) if request.stream else None
            frames: list[torch.Tensor] = []
            parts = 0
            try:
                for frame in self.generator.generate(sentence, voices, params, rng, stop):
                    frames.append(frame)
                    if decoder is not None and (audio := decoder.push(frame)) is not None:
                        yield SpeechChunk(index=index, text=sentence if parts == 0 else "", audio=audio,
                                          sample_rate=self.sample_rate, seed=seed)
                        parts += 1
            except PromptTooLongError as exc:
                raise JobInputError("reference_audio" if reference else "message", str(exc)) from None
            frames_left -= len(frames)
            # Cut by the job's limit rather than the sentence's own: its audio still goes out, then the error.
            cut = len(frames) == budget < request.max_tokens and not (stop is not None and stop.is_set())
            if not frames:
                log.warning("sentence %d produced no audio frames", index)
                continue
            codes = torch.stack(frames, dim=1)
            audio = decoder.flush() if decoder is not None else self.codec.decode(codes)
            log.info("sentence %d: %d frames in %d chunk(s), %.2f s audio in %.2f s", index + 1, codes.shape[1],
                     parts + 1, codes.shape[1] * self.codec.samples_per_frame / self.sample_rate,
                     time.perf_counter() - started)
            previous = VoicePrompt(text=sentence, codes=codes.cpu())
            # The sentence's last chunk carries its codes (and the whole sentence, for conversations).
            yield SpeechChunk(index=index, text=sentence if parts == 0 else "", audio=audio,
                              sample_rate=self.sample_rate, seed=seed, codes=previous.codes, sentence=sentence)
            if cut:
                raise self._frame_limit_error()

    def _frame_limit_error(self) -> JobFrameLimitError:
        limit = self.settings.max_job_frames
        return JobFrameLimitError(limit, limit * self.codec.samples_per_frame / self.sample_rate)
