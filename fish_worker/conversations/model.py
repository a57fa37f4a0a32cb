"""What a conversation record holds, validated with pydantic and serialisable to JSON.

Records are immutable (frozen models, read-only arrays): a store can hand out the object it keeps
without a caller's edit changing the stored conversation behind its back.
"""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

MAX_CONVERSATION_ID_LENGTH = 128
# Letters, digits and a few separators: covers UUIDs and ids like "chat-123", and is safe in a Redis key.
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)
# The rule as a field type, for every request model that takes a conversation_id (the job, its actions).
ConversationId = Annotated[
    str, Field(min_length=1, max_length=MAX_CONVERSATION_ID_LENGTH, pattern=CONVERSATION_ID_PATTERN)
]


class InvalidConversationIdError(ValueError):
    """The conversation_id of a request is not acceptable; the message starts with the field name."""


def validate_conversation_id(conversation_id: object) -> str:
    if not isinstance(conversation_id, str) or not conversation_id:
        raise InvalidConversationIdError("conversation_id: must be a non-empty string")
    if len(conversation_id) > MAX_CONVERSATION_ID_LENGTH:
        raise InvalidConversationIdError(
            f"conversation_id: at most {MAX_CONVERSATION_ID_LENGTH} characters, got {len(conversation_id)}"
        )
    if not _CONVERSATION_ID.fullmatch(conversation_id):
        raise InvalidConversationIdError(
            f"conversation_id: only letters, digits and '-', '_', '.', ':' are allowed, got {conversation_id[:40]!r}"
        )
    return conversation_id


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    content: str


class ConversationVoice(BaseModel):
    """The speaker every turn of a conversation is conditioned on.

    Either the reference the user sent (source "reference": its codec tokens and transcript), or,
    with no reference, the conversation's first spoken reply (source "first_reply"), so later turns
    continue in the voice the model happened to pick the first time.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    codes: np.ndarray  # integer codec tokens, shape [num_codebooks, frames]
    text: str  # what `codes` says
    source: Literal["reference", "first_reply"]

    @field_validator("codes", mode="before")
    @classmethod
    def _codes_array(cls, value: Any) -> np.ndarray:
        if isinstance(value, dict):  # the JSON form written by _codes_json
            try:
                raw = base64.b64decode(value["data"], validate=True)
                value = np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"unreadable codes: {exc}") from exc
        codes = np.array(value)  # a private copy, so the caller's array can change freely
        if codes.dtype.kind not in "iu":
            raise ValueError(f"codes must be an integer array, got dtype {codes.dtype}")
        if codes.ndim != 2 or 0 in codes.shape:
            raise ValueError(f"codes must have shape [num_codebooks, frames], got {codes.shape}")
        codes.setflags(write=False)
        return codes

    @field_serializer("codes")
    def _codes_json(self, codes: np.ndarray) -> dict[str, Any]:
        little_endian = codes.astype(codes.dtype.newbyteorder("<"), copy=False)
        return {
            "dtype": little_endian.dtype.str,
            "shape": list(codes.shape),
            "data": base64.b64encode(little_endian.tobytes()).decode("ascii"),
        }

    def __eq__(self, other: object) -> bool:  # the default compares arrays element-wise and fails
        return (
            isinstance(other, ConversationVoice)
            and (self.text, self.source) == (other.text, other.source)
            and np.array_equal(self.codes, other.codes)
        )


class Conversation(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: Literal[1] = 1  # bumped if the stored layout ever changes incompatibly
    conversation_id: str
    messages: tuple[Message, ...] = ()
    voice: ConversationVoice | None = None
    turns: int = Field(0, ge=0)  # turns ever appended (messages keeps only the newest ones)

    def history(self) -> list[dict[str, Any]]:
        """The messages as plain {role, content} dicts, the form chat models take."""
        return [message.model_dump() for message in self.messages]

    def with_turn(
        self, user_text: str, assistant_text: str, voice: ConversationVoice | None, max_messages: int
    ) -> Conversation:
        """This conversation plus one exchange; `voice`, if given, replaces the stored one."""
        messages = self.messages + (
            Message(role="user", content=user_text),
            Message(role="assistant", content=assistant_text),
        )
        return Conversation(
            conversation_id=self.conversation_id,
            messages=messages[-max_messages:],
            voice=voice if voice is not None else self.voice,
            turns=self.turns + 1,
        )

    def with_voice(self, voice: ConversationVoice) -> Conversation:
        return Conversation(conversation_id=self.conversation_id, messages=self.messages, voice=voice, turns=self.turns)


def new_conversation(conversation_id: str) -> Conversation:
    return Conversation(conversation_id=conversation_id)
