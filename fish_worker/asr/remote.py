"""A recognizer that asks a remote OpenAI-compatible transcription server (POST /audio/transcriptions).

    recognizer = RemoteRecognizer("http://speaches:8000/v1", api_key=None, model="Systran/faster-whisper-small")

speaches, faster-whisper-server, vLLM (`--task transcription`) and OpenAI itself serve it. The audio is
sent as a 16-bit WAV at 16 kHz (already decoded and bounded by the Transcriber) with
`response_format=verbose_json`, which carries the language and the timed segments; a server that
answers plain `{"text": ...}` gives a transcript with one segment spanning the clip. Concurrent calls
are concurrent requests on one connection pool (httpx.Client is thread-safe): the server batches.
Every failure (unreachable, timeouts, 401, 429, 5xx, an answer that is not a transcript) raises
SpeechRecognizerError saying which, bounded, never the server's whole page.
"""

from __future__ import annotations

import io
import threading
import wave
from typing import Any

import httpx
import numpy as np

from fish_worker.asr.backend import (
    ASR_SAMPLE_RATE,
    SpeechRecognizerError,
    Transcript,
    TranscriptionStopped,
    TranscriptSegment,
    UnsupportedLanguageError,
)
from fish_worker.asr.languages import language_code
from fish_worker.errors import ErrorKind, bounded
from fish_worker.settings import AsrSettings

SERVER_TEXT_CHARS = 150  # most characters of a server's own error text repeated in an error


class RemoteRecognizer:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str = "whisper-1",
        connect_timeout_s: float = 10.0,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        )

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> RemoteRecognizer:
        assert settings.base_url is not None
        return cls(
            settings.base_url,
            api_key=settings.api_key,
            model=settings.model,
            connect_timeout_s=settings.connect_timeout_s,
            timeout_s=settings.timeout_s,
        )

    @property
    def description(self) -> str:
        return f"remote transcription server {self.base_url} (model {self.model})"

    def close(self) -> None:
        self._client.close()

    def transcribe(
        self, audio: np.ndarray, *, language: str | None = None, stop: threading.Event | None = None
    ) -> Transcript:
        """`stop` is looked at before the request is sent and when its answer is back: a request in
        flight cannot be interrupted (a blocking httpx call), it is bounded by the timeout."""
        if stop is not None and stop.is_set():
            raise TranscriptionStopped()
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        duration_s = samples.size / ASR_SAMPLE_RATE
        wav = io.BytesIO()
        with wave.open(wav, "wb") as writer:  # 16-bit PCM: what every server reads, half float32's size
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(ASR_SAMPLE_RATE)
            writer.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
        data = {"model": self.model, "response_format": "verbose_json"}  # segments: its default granularity
        if language is not None:
            data["language"] = language
        url = f"{self.base_url}/audio/transcriptions"
        try:
            response = self._client.post(
                "/audio/transcriptions", data=data, files={"file": ("audio.wav", wav.getvalue(), "audio/wav")}
            )
        except httpx.TimeoutException:
            raise SpeechRecognizerError(f"speech recognizer unavailable: {url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise SpeechRecognizerError(
                f"speech recognizer unavailable: cannot reach {url} ({type(exc).__name__}: {bounded(str(exc), 200)})"
            ) from None
        if stop is not None and stop.is_set():
            raise TranscriptionStopped()
        if response.status_code != 200:
            raise self._status_error(url, response, language)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise SpeechRecognizerError(
                f"speech recognizer unavailable: {url} answered something that is not a "
                f"transcript ({bounded(response.text, SERVER_TEXT_CHARS)!r})"
            )
        return _transcript(body, language, duration_s)

    @staticmethod
    def _status_error(url: str, response: httpx.Response, language: str | None) -> Exception:
        says = bounded(_server_message(response), SERVER_TEXT_CHARS)
        status = response.status_code
        if status == 429:
            return SpeechRecognizerError(
                f"speech recognizer busy: {url} is rate limiting requests (429: {says}); try again later",
                kind=ErrorKind.BUSY,
            )
        if status in (401, 403):
            return SpeechRecognizerError(
                f"speech recognizer unavailable: {url} refused the API key ({status}: {says}); check FISH_ASR_API_KEY"
            )
        if status in (400, 422) and language is not None and "language" in says.lower():
            return UnsupportedLanguageError(f"the transcription server refused the language {language!r} ({says})")
        return SpeechRecognizerError(f"speech recognizer unavailable: {url} answered {status} ({says})")


def _server_message(response: httpx.Response) -> str:
    """The server's own error text: OpenAI's {"error": {"message": ...}}, {"detail": ...}, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.text.strip()


def _transcript(body: dict[str, Any], language: str | None, duration_s: float) -> Transcript:
    text = str(body["text"]).strip()
    segments: list[TranscriptSegment] = []
    raw_segments = body.get("segments")
    if isinstance(raw_segments, list):
        for raw in raw_segments:
            try:
                start = min(max(float(raw["start"]), 0.0), duration_s)
                end = min(max(float(raw["end"]), start), duration_s)
                piece = str(raw["text"]).strip()
            except (KeyError, TypeError, ValueError):
                continue  # a malformed segment loses its times, never the transcript
            if piece:
                segments.append(TranscriptSegment(start_s=round(start, 3), end_s=round(end, 3), text=piece))
    if not segments and text:
        segments.append(TranscriptSegment(start_s=0.0, end_s=round(duration_s, 3), text=text))
    spoken = body.get("language")
    return Transcript(
        text=text,
        language=_language_code(spoken) if isinstance(spoken, str) else language,
        duration_s=round(duration_s, 3),
        segments=tuple(segments),
    )


def _language_code(language: str) -> str:
    """OpenAI's verbose_json names the language ("english"); the Transcript carries its code ("en").
    One Whisper does not know is kept as the server said it."""
    return language_code(language) or language.strip().lower()
