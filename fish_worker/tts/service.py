"""Speech synthesis for one SynthesisRequest (tts/requests.py): sentences → codec tokens → audio chunks.

`TTSService` only synthesises: it is given its engine (generator, codec), its VoiceResolver and its
limits, built at start-up by tts/loader.py.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.codec import Codec
from fish_worker.engine.incremental_decode import IncrementalDecoder
from fish_worker.engine.generation import PromptTooLongError, VoicePrompt
from fish_worker.engine.sampling import SamplingParams
from fish_worker.errors import JobInputError
from fish_worker.settings import Settings
from fish_worker.text.sentences import split_sentences
from fish_worker.tts.requests import SEED_LIMIT, SpeechChunk, SynthesisRequest
from fish_worker.tts.voice_resolver import VoiceResolver
from fish_worker.tts.voices import VoiceStore

log = logging.getLogger(__name__)

# Not the caller's fault and no field to blame: the model sampled its end token before any audio.
NO_AUDIO_ERROR = "the model produced no audio for this text (it ended at once); try another seed or wording"


def draw_seed() -> int:
    """A fresh random seed that JavaScript clients can send back exactly (below 2**53)."""
    return secrets.randbelow(SEED_LIMIT)


class JobFrameLimitError(JobInputError):
    """The job's sentences together reached FISH_MAX_JOB_FRAMES before the text was spoken."""

    def __init__(self, limit: int, seconds: float):
        super().__init__(
            "message",
            f"the speech reached the per-job limit of {limit} codec frames "
            f"(~{seconds:.0f} s, FISH_MAX_JOB_FRAMES) before its end; send shorter text",
        )


@dataclass(frozen=True)
class SpeechLimits:
    """What bounds one synthesis (the settings of the same names)."""

    sentence_max_chars: int  # where `text` is cut into sentences
    max_job_frames: int  # all sentences of one request together
    stream_first_frames: int  # a streamed sentence's first audio window
    stream_context_frames: int  # frames decoded again before each later window, for a seamless join

    @classmethod
    def of(cls, settings: Settings) -> "SpeechLimits":
        return cls(
            settings.sentence_max_chars,
            settings.max_job_frames,
            settings.stream_first_frames,
            settings.stream_context_frames,
        )


__all__ = [
    "NO_AUDIO_ERROR",
    "JobFrameLimitError",
    "SpeechChunk",
    "SpeechLimits",
    "SynthesisRequest",
    "TTSService",
    "draw_seed",
]


class TTSService:
    def __init__(self, generator: BatchScheduler, codec: Codec, voices: VoiceResolver, limits: SpeechLimits):
        self.generator = generator
        self.codec = codec
        self.voices = voices
        self.limits = limits

    @property
    def max_concurrency(self) -> int:
        """Requests generated at once: the engine's batch (FISH_MAX_CONCURRENCY, or what the KV pool holds)."""
        return self.generator.max_batch

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

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
        up (a tenant's store); default the resolver's.
        All sentences together get at most `limits.max_job_frames` frames: a job that needs more
        raises JobFrameLimitError once they are spent (streamed jobs have sent the audio up to there).
        """
        sentences = request.sentences
        if sentences is None:
            sentences = split_sentences(request.text, self.limits.sentence_max_chars, request.language)
        reference = self.voices.resolve(request.voice, voices)
        seed = request.seed if request.seed is not None else draw_seed()
        rng = torch.Generator(device=self.generator.device).manual_seed(seed)
        frames_left = self.limits.max_job_frames

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
            decoder = (
                IncrementalDecoder(self.codec, self.limits.stream_first_frames, self.limits.stream_context_frames)
                if request.stream
                else None
            )
            frames: list[torch.Tensor] = []
            parts = 0
            try:
                for frame in self.generator.generate(sentence, prompts, params, rng, stop):
                    frames.append(frame)
                    if decoder is not None and (audio := decoder.push(frame)) is not None:
                        yield SpeechChunk(
                            index=index,
                            text=sentence if parts == 0 else "",
                            audio=audio,
                            sample_rate=self.sample_rate,
                            seed=seed,
                        )
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
            log.info(
                "sentence %d: %d frames in %d chunk(s), %.2f s audio in %.2f s",
                index + 1,
                codes.shape[1],
                parts + 1,
                codes.shape[1] * self.codec.samples_per_frame / self.sample_rate,
                time.perf_counter() - started,
            )
            previous = VoicePrompt(text=sentence, codes=codes.cpu())
            # The sentence's last chunk carries its codes (and the whole sentence, for conversations).
            yield SpeechChunk(
                index=index,
                text=sentence if parts == 0 else "",
                audio=audio,
                sample_rate=self.sample_rate,
                seed=seed,
                codes=previous.codes,
                sentence=sentence,
            )
            if cut:
                raise self._frame_limit_error()

    def _frame_limit_error(self) -> JobFrameLimitError:
        limit = self.limits.max_job_frames
        return JobFrameLimitError(limit, limit * self.codec.samples_per_frame / self.sample_rate)
