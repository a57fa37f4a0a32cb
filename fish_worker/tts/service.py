"""Speech synthesis for one SynthesisRequest (tts/requests.py): sentences → codec tokens → audio chunks."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator

import torch

from fish_worker.audio.reference import decode_audio_file, reference_bytes
from fish_worker.engine import kv_budget
from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.checkpoint import load_models
from fish_worker.engine.codec import Codec
from fish_worker.engine.incremental_decode import IncrementalDecoder
from fish_worker.engine.generation import PromptTooLongError, SemanticGenerator, VoicePrompt
from fish_worker.engine.sampling import SamplingParams
from fish_worker.errors import JobInputError, NotFoundError, shown
from fish_worker.settings import Settings
from fish_worker.text.sentences import split_sentences
from fish_worker.tts.requests import SEED_LIMIT, ReferenceClip, SavedVoiceRef, SpeechChunk, SynthesisRequest, Voice
from fish_worker.tts.voice_cache import VoiceCodesCache
from fish_worker.tts.voices import VoiceNotFoundError, VoiceStore

log = logging.getLogger(__name__)
# FISH_CODEC_BATCH_FRAMES when unset on a GPU: a batch of concurrent decodes holds at most half the
# frames one long sentence's decode may (max_tokens_limit, 2048), so batching adds no memory peak.
GPU_CODEC_BATCH_FRAMES = 1024

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


__all__ = ["NO_AUDIO_ERROR", "JobFrameLimitError", "SpeechChunk", "SynthesisRequest", "TTSService", "draw_seed"]


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
        self.memory_plan: kv_budget.KVBudget | None = None  # set by load(): KV pool size and concurrency

    @classmethod
    def load(cls, settings: Settings, reserved_bytes: int = 0) -> "TTSService":
        """`reserved_bytes`: GPU memory the pool leaves to others loaded before it (the chat model's KV)."""
        started = time.perf_counter()
        device = resolve_device(settings.device)
        precision = resolve_precision(settings.precision, device)
        models = load_models(settings.checkpoint_dir, device, precision)
        budget = kv_budget.plan(models.text2semantic, precision, device, settings.max_concurrency,
                                settings.kv_cache_tokens, reserved_bytes=reserved_bytes)
        log.info("KV cache: %d tokens (%.2f GB), up to %d concurrent jobs%s", budget.kv_tokens,
                 budget.pool_bytes / 1e9, budget.max_concurrency,
                 f"; {reserved_bytes / 1e9:.2f} GB left for the chat model's KV" if reserved_bytes else "")
        # Concurrent requests share decoding steps (one engine thread) instead of queueing on a lock.
        generator = BatchScheduler(SemanticGenerator(models.text2semantic, device), budget.max_concurrency,
                                   compile=settings.compile, kv_tokens=budget.kv_tokens)
        batch_frames = settings.codec_batch_frames
        if batch_frames is None:
            batch_frames = GPU_CODEC_BATCH_FRAMES if device.type == "cuda" else 0
        service = cls(settings, generator, Codec(models.codec, device, precision, batch_frames))
        service.memory_plan = budget
        log.info("models loaded from %s on %s/%s in %.1f s", settings.checkpoint_dir, device, precision,
                 time.perf_counter() - started)
        return service

    @property
    def max_concurrency(self) -> int:
        """Jobs this worker runs at once: FISH_MAX_CONCURRENCY, or what the KV pool holds when unset."""
        if self.memory_plan is not None:
            return self.memory_plan.max_concurrency
        return self.settings.max_concurrency or kv_budget.CPU_DEFAULT_CONCURRENCY

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def warmup(self) -> None:
        started = time.perf_counter()
        for _ in self.synthesize(SynthesisRequest(text="Warm up.", frames_per_sentence=8, seed=0)):
            pass
        log.info("warm-up synthesis took %.2f s", time.perf_counter() - started)

    def resolve_voice(self, voice: Voice, voices: VoiceStore | None = None) -> VoicePrompt | None:
        """The prompt for a request's `voice`: a saved voice (looked up in `voices`, default this
        service's store), an encoded clip, the prompt itself, or None."""
        if isinstance(voice, SavedVoiceRef):
            return self.saved_voice(voice.voice_id, voices)
        if isinstance(voice, ReferenceClip):
            return self.encode_reference(voice.audio_b64, voice.text)
        return voice

    def encode_reference(self, audio: str | bytes, text: str = "") -> VoicePrompt:
        """A voice prompt from an audio file (bytes, or base64 text) and its transcript (cached by
        the file's bytes); JobInputError("reference_audio: ...") when the audio is unusable."""
        raw = reference_bytes(audio, self.settings.reference_max_bytes)
        key = VoiceCodesCache.key(raw)
        codes = self.voice_cache.get(key)
        if codes is None:
            samples = decode_audio_file(raw, self.sample_rate, self.settings.reference_max_seconds)
            codes = self.codec.encode(samples)
            self.voice_cache.put(key, codes)
            log.info("encoded reference voice: %.1f s → %d frames", len(samples) / self.sample_rate, codes.shape[1])
        return VoicePrompt(text=text or "", codes=codes)

    def saved_voice(self, voice_id: str, voices: VoiceStore | None = None) -> VoicePrompt:
        """The saved voice's prompt; NotFoundError (voice_id) when this store has no such voice."""
        try:
            voice = (voices or self.voices).load(voice_id)
        except VoiceNotFoundError:
            raise NotFoundError("voice_id", f"no saved voice named {shown(voice_id)}") from None
        if voice.tokens.shape[0] != self.generator.num_codebooks:  # saved with another model
            raise JobInputError("voice_id", f"{shown(voice_id)} was saved with a different model; save it again")
        return VoicePrompt(text=voice.text, codes=torch.from_numpy(voice.tokens).to(torch.int))

    def synthesize(
        self,
        request: SynthesisRequest,
        stop: threading.Event | None = None,
        *,
        voices: VoiceStore | None = None,
    ) -> Iterator[SpeechChunk]:
        """Yield one chunk per sentence, in order; stops early when `stop` is set.

        `request.sentences`, when given, replaces the split `request.text`; it may be lazy (a chat
        reply still being written): each is pulled when due. `voices`: where a saved voice is looked
        up (a tenant's store); default this service's.
        All sentences together get at most `settings.max_job_frames` frames: a job that needs more
        raises JobFrameLimitError once they are spent (streamed jobs have sent the audio up to there).
        """
        sentences = request.sentences
        if sentences is None:
            sentences = split_sentences(request.text, self.settings.sentence_max_chars, request.language)
        reference = self.resolve_voice(request.voice, voices)
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
            budget = min(request.frames_per_sentence, frames_left)
            params = SamplingParams(request.temperature, request.top_p, request.repetition_penalty, budget)
            # Condition on the reference and on the previous sentence, so every sentence keeps one voice.
            prompts = [v for v in (reference, previous) if v is not None]
            started = time.perf_counter()
            # Streamed: audio leaves in windows while the sentence is still being generated; the
            # sentence's text rides on its first chunk, continuation chunks carry "".
            decoder = IncrementalDecoder(self.codec, self.settings.stream_first_frames,
                                         self.settings.stream_context_frames) if request.stream else None
            frames: list[torch.Tensor] = []
            parts = 0
            try:
                for frame in self.generator.generate(sentence, prompts, params, rng, stop):
                    frames.append(frame)
                    if decoder is not None and (audio := decoder.push(frame)) is not None:
                        yield SpeechChunk(index=index, text=sentence if parts == 0 else "", audio=audio,
                                          sample_rate=self.sample_rate, seed=seed)
                        parts += 1
            except PromptTooLongError as exc:
                raise JobInputError("reference_audio" if reference else "message", str(exc)) from None
            frames_left -= len(frames)
            stopped = stop is not None and stop.is_set()
            # Cut by the job's limit rather than the sentence's own: its audio still goes out, then the error.
            cut = len(frames) == budget < request.frames_per_sentence and not stopped
            if not frames:
                if stopped:  # cancelled or its client went away before the first frame: nothing to report
                    log.info("sentence %d stopped before its first frame", index + 1)
                    return
                log.warning("sentence %d produced no audio frames", index + 1)
                continue
            if stopped:  # nobody will receive it: skip its codec decode (seconds on a CPU for a long sentence)
                log.info("sentence %d stopped after %d frames (cancelled or the client left)", index + 1, len(frames))
                return
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
