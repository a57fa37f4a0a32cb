"""One conversation turn as ConversationService takes it (no wire model, no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fish_worker.tts.requests import SynthesisRequest

Mode = Literal["chat", "tts"]


@dataclass(frozen=True)
class TurnRequest:
    """A turn: `message` replied to (chat) or spoken (tts), in a conversation or alone.

    The two budgets a job's one `max_tokens` stands for, kept apart: `reply_tokens` bounds the chat
    model's reply, `speech.frames_per_sentence` each spoken sentence.
    """

    message: str
    mode: Mode
    speech: SynthesisRequest  # sampling, seed, voice and streaming of the spoken audio
    conversation_id: str | None = None
    reply_tokens: int = 1000  # chat mode: most LLM tokens in the reply
    system_prompt: str | None = None  # chat mode: the LLM's instructions (None: the configured default)
