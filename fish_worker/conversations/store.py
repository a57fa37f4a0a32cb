"""The interface both conversation stores implement, its error, and the limits they share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fish_worker.conversations.model import Conversation, ConversationVoice
from fish_worker.errors import ErrorKind, WorkerError

# Messages kept per conversation (the newest ones): the chat model only sees what fits its context
# anyway, and an unbounded record would make every turn's read and write slower.
DEFAULT_MAX_MESSAGES = 200


class ConversationStoreError(WorkerError, RuntimeError):
    """The store cannot be used (unreachable, failing, or holding an unreadable record): UNAVAILABLE.

    Raised instead of carrying on without history, which would silently break the conversation.
    """

    kind = ErrorKind.UNAVAILABLE


@runtime_checkable
class ConversationStore(Protocol):
    def get(self, conversation_id: str) -> Conversation | None:
        """The conversation, or None when it never existed, expired or was deleted."""

    def append_turn(
        self,
        conversation_id: str,
        user_text: str,
        assistant_text: str,
        *,
        voice: ConversationVoice | None = None,
    ) -> Conversation:
        """Atomically add one exchange (creating the conversation if needed) and restart its TTL.

        `voice`, if given, replaces the conversation's voice in the same write. Returns the new record.
        """

    def set_voice(self, conversation_id: str, voice: ConversationVoice) -> Conversation:
        """Atomically set the voice (creating the conversation if needed) and restart its TTL."""

    def delete(self, conversation_id: str) -> bool:
        """Forget the conversation, history and voice; True if there was one."""

    def ping(self) -> None:
        """Raise ConversationStoreError unless the store is usable (for a start-up check)."""

    def for_tenant(self, tenant: str | None) -> "ConversationStore":
        """The store of `tenant`'s conversations, apart from every other tenant's; None: the default one."""


def check_limits(ttl_s: int, max_messages: int) -> int:
    """Validate the limits shared by both stores; returns max_messages rounded down to whole exchanges."""
    if ttl_s < 1:
        raise ValueError(f"ttl_s must be >= 1 second, got {ttl_s}")
    if max_messages < 2:
        raise ValueError(f"max_messages must be >= 2 (one exchange), got {max_messages}")
    # Whole exchanges, so a trimmed history still starts with a user message.
    return max_messages - max_messages % 2
