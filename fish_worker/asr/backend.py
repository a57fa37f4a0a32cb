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
- `stop` (a threading.Event, set by the caller from another thread when its client left) ends the call
  early with TranscriptionStopped: the local model at its next decoding step, a request still waiting
  for its batch at once. A remote request already sent runs to its answer (httpx cannot interrupt a
  blocking call), bounded by FISH_ASR_TIMEOUT_S.
"""

from __future__ import annotations

import threading
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


class TranscriptionStopped(WorkerError):
    """The caller's `stop` was set: the transcription ended early and there is no transcript. Whoever
    set it has gone (a client that hung up, a cancelled job), so nobody reads this message."""

    kind = ErrorKind.BAD_INPUT

    def __init__(self) -> None:
        super().__init__("audio: the transcription was stopped (its client left)", field="audio")


class UnsupportedLanguageError(ValueError):
    """The requested language is not one the recognizer knows; the message lists what is accepted."""


@runtime_checkable
class SpeechRecognizer(Protocol):
    @property
    def description(self) -> str:
        """What transcribes, for the start-up log: "local Whisper /models/x on cuda:0", "remote ..."."""

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, stop: threading.Event | None = None
    ) -> Transcript:
        """Transcribe mono float32 `audio` at ASR_SAMPLE_RATE; blocking; callable from any thread;
        TranscriptionStopped soon after `stop` is set."""
