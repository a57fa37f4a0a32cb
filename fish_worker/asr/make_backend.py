"""Build the recognizer the settings choose (backend.py), and the Transcriber over it. Apart from
backend.py, which each recognizer imports for its types; the local model's weights load only when chosen."""

from __future__ import annotations

import torch

from fish_worker.asr.backend import SpeechRecognizer
from fish_worker.asr.transcriber import Transcriber
from fish_worker.settings import AsrSettings, Settings


def make_recognizer(settings: AsrSettings, device: str | torch.device | None = None) -> SpeechRecognizer | None:
    """The remote server at FISH_ASR_BASE_URL (no weights loaded here), the local Whisper in
    FISH_ASR_MODEL_DIR (loaded now, on `device`), or None (no speech in)."""
    if settings.base_url is not None:
        from fish_worker.asr.remote import RemoteRecognizer

        return RemoteRecognizer.from_settings(settings)
    if settings.model_dir is not None:
        from fish_worker.asr.whisper import WhisperRecognizer

        return WhisperRecognizer.load(settings.model_dir, device=device, max_batch=settings.max_batch)
    return None


def make_transcriber(settings: Settings, device: str | torch.device | None = None) -> Transcriber | None:
    """The Transcriber of `settings.asr`, on `device` (unset: FISH_DEVICE, "auto" → a GPU if there is
    one); None when neither FISH_ASR_MODEL_DIR nor FISH_ASR_BASE_URL is set."""
    if device is None:
        device = (
            "cuda"
            if settings.device == "auto" and torch.cuda.is_available()
            else ("cpu" if settings.device == "auto" else settings.device)
        )
    recognizer = make_recognizer(settings.asr, device=device)
    if recognizer is None:
        return None
    return Transcriber(recognizer, max_seconds=settings.asr.max_seconds, max_bytes=settings.asr.max_bytes)
