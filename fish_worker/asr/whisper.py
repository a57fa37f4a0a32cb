"""The local recognizer: a Whisper model from a Hugging Face directory, run by transformers.

    recognizer = WhisperRecognizer.load("/models/whisper-large-v3-turbo", device="cuda", max_batch=8)
    transcript = recognizer.transcribe(samples_16k, language=None)

transformers' own `WhisperForConditionalGeneration.generate` does the decoding (timestamp rules,
suppressed tokens, the long-form loop over 30 s windows), so a transcript here is exactly what that
model gives through transformers (tests/test_asr_whisper.py compares them). What this module adds:
- concurrent calls are batched (batching.py): up to `max_batch` clips of at most 30 s go through the
  encoder and the greedy decoder as one batch. A longer clip runs alone: transformers' long-form loop
  would otherwise switch the short clips it is batched with to the long-form path.
- the language, when not given, is detected per clip first (`detect_language`, on the first 30 s),
  so each row is then decoded with its own language and the transcript says which one it was.
- timestamps are always on: the segments and their times come from Whisper's timestamp tokens.
- a call can be stopped (`stop`, set from another thread): a stopping criterion ends its row at the
  next decoding step (the rest of its batch goes on, unchanged), and ends the whole `generate` when
  every row of the batch has stopped, long-form windows included.
bf16 on a GPU, fp32 on the CPU (as the chat model).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fish_worker.asr.backend import (
    ASR_SAMPLE_RATE,
    SpeechRecognizerError,
    Transcript,
    TranscriptionStopped,
    TranscriptSegment,
    UnsupportedLanguageError,
)
from fish_worker.asr.batching import Batcher
from fish_worker.asr.languages import language_code

DEFAULT_MAX_BATCH = 8
WINDOW_SECONDS = 30  # Whisper's input window: 3000 feature frames


class WhisperModelError(RuntimeError):
    """The Whisper model directory is missing or cannot be loaded."""


@dataclass(frozen=True, eq=False)
class _Clip:
    audio: np.ndarray
    language: str | None  # a language code, or None to detect


def _stop_rows(stops: Sequence[threading.Event]) -> Any:
    """A transformers StoppingCriteria: a row whose request was stopped is done (generate pads it from
    then on, as a row that reached its end, so the other rows decode exactly as they would have); when
    every row has stopped, TranscriptionStopped ends the whole call. Unstopped, it says "not done"."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopRows(StoppingCriteria):
        none_stopped: torch.Tensor | None = None  # made once: no host-to-device copy per step (a GPU sync)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            stopped = [stop.is_set() for stop in stops]
            if all(stopped):
                raise TranscriptionStopped()
            # Not this batch's rows (never stop a row blindly), or no row stopped: the common case.
            if len(stopped) != input_ids.shape[0] or not any(stopped):
                if self.none_stopped is None or self.none_stopped.shape[0] != input_ids.shape[0]:
                    self.none_stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return self.none_stopped
            return torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopRows()])


class WhisperRecognizer:
    """A SpeechRecognizer (backend.py) over a local Whisper model; concurrent calls batch together."""

    def __init__(self, model: Any, processor: Any, *, source: str, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.model = model
        self.processor = processor
        self.source = source
        generation = model.generation_config
        self._multilingual = bool(getattr(generation, "is_multilingual", False))
        lang_to_id: dict[str, int] = dict(getattr(generation, "lang_to_id", None) or {})
        self._id_to_language = {token_id: token.strip("<|>") for token, token_id in lang_to_id.items()}
        self._languages = frozenset(self._id_to_language.values())
        self._eos = int(
            generation.eos_token_id if isinstance(generation.eos_token_id, int) else generation.eos_token_id[0]
        )
        self._window_samples = WINDOW_SECONDS * ASR_SAMPLE_RATE
        self._batcher: Batcher[_Clip, Transcript] = Batcher(
            self._transcribe_many, max_batch, fits=self._fits, stopped=TranscriptionStopped
        )
        self._lock = threading.Lock()  # one model call at a time, also outside the batcher (warm-up)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, max_batch: int = DEFAULT_MAX_BATCH
    ) -> WhisperRecognizer:
        """Load the processor and weights from a local directory (never the network)."""
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise WhisperModelError(f"Whisper model directory {path} has no config.json (not a Hugging Face model)")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
            model: Any = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
        except Exception as exc:
            raise WhisperModelError(f"cannot load the Whisper model in {path}: {exc}") from exc
        model.to(device).eval()
        return cls(model, processor, source=str(path), max_batch=max_batch)

    @property
    def description(self) -> str:
        return f"local Whisper {self.source} on {self.model.device}"

    @property
    def batches(self) -> tuple[int, int]:
        """(batches run, requests they carried) since start: for tests and the bench."""
        return self._batcher.batches, self._batcher.requests

    @property
    def idle(self) -> bool:
        """No transcription running or waiting."""
        return self._batcher.idle

    def language_code(self, language: str | None) -> str | None:
        """ "en", "English" or "english" → "en"; None stays None; an unknown one raises UnsupportedLanguageError."""
        if language is None:
            return None
        code = language_code(language) or language.strip().lower()
        if not self._multilingual:
            if code != "en":
                raise UnsupportedLanguageError(f"this Whisper model is English-only; got {language!r}")
            return code
        if code not in self._languages:
            raise UnsupportedLanguageError(
                f"{language!r} is not a language this Whisper model knows "
                f"(a code such as 'en', 'de', 'ja' or a name such as 'english')"
            )
        return code

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, stop: threading.Event | None = None
    ) -> Transcript:
        code = self.language_code(language)
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        return self._batcher.run(_Clip(samples, code), stop)

    def _fits(self, batch: Sequence[_Clip], clip: _Clip) -> bool:
        return clip.audio.size <= self._window_samples and all(c.audio.size <= self._window_samples for c in batch)

    def _transcribe_many(self, clips: Sequence[_Clip], stops: Sequence[threading.Event]) -> list[Transcript]:
        if all(stop.is_set() for stop in stops):
            raise TranscriptionStopped()
        long_form = any(c.audio.size > self._window_samples for c in clips)
        extractor = self.processor.feature_extractor
        kwargs: dict[str, Any] = (
            {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        )
        inputs = extractor([c.audio for c in clips], sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt", **kwargs)
        features = inputs.input_features.to(self.model.device, self.model.dtype)
        extra: dict[str, Any] = {}
        if long_form:
            extra["attention_mask"] = inputs.attention_mask.to(self.model.device)
        try:
            with self._lock, torch.inference_mode():
                languages = self._languages_of(clips, features)
                output = self.model.generate(
                    features,
                    language=languages if self._multilingual else None,
                    task="transcribe" if self._multilingual else None,
                    return_timestamps=True,
                    return_segments=True,
                    stopping_criteria=_stop_rows(stops),
                    **extra,
                )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise SpeechRecognizerError(f"speech recognizer failed: {type(exc).__name__}: {exc}") from exc
        return [
            self._transcript(segments, language, clip.audio.size / ASR_SAMPLE_RATE)
            for segments, language, clip in zip(output["segments"], languages, clips, strict=True)
        ]

    def _languages_of(self, clips: Sequence[_Clip], features: torch.Tensor) -> list[str]:
        """Each clip's language: as given, else detected on its first 30 s (English for English-only models)."""
        if not self._multilingual:
            return ["en"] * len(clips)
        missing = [i for i, c in enumerate(clips) if c.language is None]
        detected: dict[int, str] = {}
        if missing:
            window = features[missing, :, : self.processor.feature_extractor.nb_max_frames]
            ids = self.model.detect_language(window)
            detected = {i: self._id_to_language[int(token)] for i, token in zip(missing, ids.reshape(-1), strict=True)}
        return [c.language if c.language is not None else detected[i] for i, c in enumerate(clips)]

    def _transcript(self, segments: list[dict[str, Any]], language: str, duration_s: float) -> Transcript:
        tokenizer = self.processor.tokenizer
        parts, all_tokens = [], []
        for segment in segments:
            tokens = [int(t) for t in segment["tokens"] if int(t) < self._eos]  # text only, no timestamps
            all_tokens += tokens
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if not text:
                continue
            start = min(max(float(segment["start"]), 0.0), duration_s)
            end = min(max(float(segment["end"]), start), duration_s)
            parts.append(TranscriptSegment(start_s=round(start, 3), end_s=round(end, 3), text=text))
        text = tokenizer.decode(all_tokens, skip_special_tokens=True).strip()
        return Transcript(text=text, language=language, duration_s=round(duration_s, 3), segments=tuple(parts))
