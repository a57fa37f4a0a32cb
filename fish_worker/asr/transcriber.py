"""What every door calls to turn a client's voice message into text.

    transcript = transcriber.transcribe_bytes(body_or_base64, field="audio", language=None)

The audio goes through the project's one input decoder (audio/reference.py: any common format, base64
with line breaks or a data: URI, bounded while it decodes) to mono 16 kHz, with the ASR limits
(FISH_ASR_MAX_SECONDS, FISH_ASR_MAX_BYTES); then the recognizer transcribes it. Everything the client
can get wrong is a JobInputError (400) naming the field: undecodable, too long or too large, empty,
silent, an unknown language. A failing recognizer is SpeechRecognizerError (503). `stop` (set from
another thread when the caller has gone) ends the work early with TranscriptionStopped.
"""

from __future__ import annotations

import threading

import numpy as np

from fish_worker.asr.languages import whisper_language
from fish_worker.asr.backend import (
    ASR_SAMPLE_RATE,
    SpeechRecognizer,
    Transcript,
    TranscriptionStopped,
    UnsupportedLanguageError,
)
from fish_worker.audio.reference import decode_reference_audio
from fish_worker.errors import JobInputError

LANGUAGE_FIELD = "language"
MAX_LANGUAGE_CHARS = 32  # "haitian creole" is the longest name Whisper knows


class Transcriber:
    """A recognizer and the limits its input is held to."""

    def __init__(self, recognizer: SpeechRecognizer, *, max_seconds: float, max_bytes: int) -> None:
        self.recognizer = recognizer
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes

    @property
    def description(self) -> str:
        return self.recognizer.description

    def transcribe_bytes(
        self,
        data: bytes | str,
        *,
        field: str = "audio",
        language: str | None = None,
        stop: threading.Event | None = None,
    ) -> Transcript:
        """Transcribe an audio file's bytes, or its base64 text; `field` names it in errors."""
        language = self._checked_language(language)
        audio = decode_reference_audio(data, ASR_SAMPLE_RATE, self.max_seconds, self.max_bytes, field=field)
        return self.transcribe_samples(audio, language=language, stop=stop)

    def transcribe_samples(
        self, audio: np.ndarray, *, language: str | None = None, stop: threading.Event | None = None
    ) -> Transcript:
        """Transcribe mono float32 samples at ASR_SAMPLE_RATE (already decoded and within the limits)."""
        if stop is not None and stop.is_set():
            raise TranscriptionStopped()
        try:
            return self.recognizer.transcribe(audio, language=self._checked_language(language), stop=stop)
        except UnsupportedLanguageError as exc:
            raise JobInputError(LANGUAGE_FIELD, str(exc)) from None

    @staticmethod
    def _checked_language(language: str | None) -> str | None:
        if language is None:
            return None
        if not isinstance(language, str):
            raise JobInputError(LANGUAGE_FIELD, "must be a language code such as 'en' or a name such as 'english'")
        language = language.strip()
        if not language or language.lower() == "auto":
            return None  # detect it
        if len(language) > MAX_LANGUAGE_CHARS:
            raise JobInputError(LANGUAGE_FIELD, f"is longer than {MAX_LANGUAGE_CHARS} characters")
        return whisper_language(language)  # the one reading on every door: "pt-BR" → "pt", "nb" → "no"
