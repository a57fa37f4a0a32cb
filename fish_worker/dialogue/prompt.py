"""Render a chat history into prompt token ids that leave room for the reply in the model's context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, TypeAdapter

from fish_worker.dialogue.chat_template import render_prompt


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


_MESSAGES = TypeAdapter(list[ChatMessage])


class PromptTooLongError(ValueError):
    """Even the system prompt and the latest user message alone do not fit the model's context."""


@dataclass(frozen=True)
class FittedPrompt:
    token_ids: list[int]
    messages: list[dict]  # what the prompt was rendered from, system prompt included
    dropped_messages: int  # oldest history messages left out to fit the context
    max_new_tokens: int  # the reply budget, lowered only when the latest message leaves less room


def arrange_messages(messages: list[dict], system_prompt: str | None) -> tuple[list[dict], list[dict]]:
    """The system messages (`system_prompt` first) and the turns, checked; every backend sends these.

    Raises ValueError unless each message is a role and a text, and the turns end with the user's.
    """
    parsed = [m.model_dump() for m in _MESSAGES.validate_python(messages)]
    system = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        m for m in parsed if m["role"] == "system"
    ]
    turns = [m for m in parsed if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("messages must end with the user message to reply to")
    return system, turns


def fit_prompt(
    tokenizer,
    messages: list[dict],
    *,
    system_prompt: str | None,
    max_new_tokens: int,
    context_tokens: int,
) -> FittedPrompt:
    """Drop the oldest turns (never system messages, never the latest user turn) until the prompt fits.

    The history must end with the user turn being answered. After dropping, the history restarts on
    a user turn, since many chat templates reject a conversation that opens with the assistant.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    system, turns = arrange_messages(messages, system_prompt)

    dropped = 0
    while True:
        kept = system + turns[dropped:]
        token_ids = render_prompt(tokenizer, kept)
        room = context_tokens - len(token_ids)
        if room >= max_new_tokens or dropped == len(turns) - 1:
            break
        dropped += 1
        while turns[dropped]["role"] != "user":  # restart on a user turn; the last one always is
            dropped += 1
    if room < 1:
        raise PromptTooLongError(
            f"the message is too long for the chat model: the prompt needs {len(token_ids)} tokens "
            f"and the model's context holds {context_tokens}"
        )
    return FittedPrompt(token_ids, kept, dropped, min(max_new_tokens, room))
