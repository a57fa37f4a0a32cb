"""Build the chat backend the settings choose (backend.py). Apart from backend.py, which each backend
imports for its error and so cannot import them back; the local model's weights load only when chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fish_worker.dialogue.backend import ChatBackend
from fish_worker.settings import ChatSettings

if TYPE_CHECKING:  # not imported at run time: torch loads only with the local model
    import torch


def make_chat_backend(settings: ChatSettings, device: str | torch.device | None = None) -> ChatBackend | None:
    """The backend the settings choose: the remote engine at FISH_CHAT_BASE_URL (no weights loaded here),
    the local model in FISH_CHAT_MODEL_DIR (loaded now, on `device`), or None (no chat mode)."""
    if settings.base_url is not None:
        from fish_worker.dialogue.remote_chat import RemoteChatBackend

        return RemoteChatBackend.from_settings(settings)
    if settings.model_dir is not None:
        from fish_worker.dialogue.llm import ChatModel

        return ChatModel.load(settings.model_dir, device=device, max_batch=settings.max_batch)
    return None
