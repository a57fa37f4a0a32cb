"""What turns speech into text: one interface, a local Whisper (whisper.py) or a remote server (remote.py).

    transcriber = make_transcriber(settings)            # make_backend.py; None: no ASR configured
    transcript = transcriber.transcribe_bytes(body, field="audio", language=None)

The contract every recognizer keeps, so the Transcriber and the doors never ask which one they have:
- `transcribe(audio, language=...)` takes mono float32 samples at ASR_SAMPLE_RATE and blocks until the
  whole transcript is there. It may be called from several threads at once (the local model batches
  concurrent calls, the remote one sends one request each).
- `language` is a Whisper language code ("en") or name ("english"), or None to detect it. One the
  recognizer does not know raises UnsupportedLanguageError up front.
- The recognizer failing (unreachable server, refused request, broken model) raises
  SpeechRecognizerError: UNAVAILABLE, or BUSY when the server says it is rate limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fish_worker.errors import ErrorKind, WorkerError

ASR_SAMPLE_RATE = 16_000  # what Whisper's feature extractor (and every OpenAI-compatible server) expects


@dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of the transcript and when it was said, in seconds from the start of the audio."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str  # the whole transcript, stripped; "" when nothing was recognised
    language: str | None  # the language code spoken (given or detected), None if the recognizer does not say
    duration_s: float  # of the audio transcribed
    segments: tuple[TranscriptSegment, ...]


class SpeechRecognizerError(WorkerError, RuntimeError):
    """The recognizer failed (unreachable, refused, broke off, answered nonsense). The message starts
    "speech recognizer ...", so a job says what failed."""

    kind = ErrorKind.UNAVAILABLE


class UnsupportedLanguageError(ValueError):
    """The requested language is not one the recognizer knows; the message lists what is accepted."""


@runtime_checkable
class SpeechRecognizer(Protocol):
    @property
    def description(self) -> str:
        """What transcribes, for the start-up log: "local Whisper /models/x on cuda:0", "remote ..."."""

    def transcribe(self, audio: np.ndarray, *, language: str | None = None) -> Transcript:
        """Transcribe mono float32 `audio` at ASR_SAMPLE_RATE; blocking; callable from any thread."""
