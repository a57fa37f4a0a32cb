"""In-process conversation store: the default, for a single worker (each worker has its own)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fish_worker.conversations.model import Conversation, ConversationVoice, new_conversation, validate_conversation_id
from fish_worker.conversations.store import DEFAULT_MAX_MESSAGES, check_limits
from fish_worker.tenancy import validate_tenant


class MemoryConversationStore:
    """At most `max_conversations`, least recently used evicted first; each expires `ttl_s` after its last write."""

    def __init__(
        self,
        *,
        ttl_s: int,
        max_conversations: int,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_messages = check_limits(ttl_s, max_messages)
        if max_conversations < 1:
            raise ValueError(f"max_conversations must be >= 1, got {max_conversations}")
        self.ttl_s = ttl_s
        self.max_conversations = max_conversations
        self._clock = clock
        self._lock = threading.Lock()
        # conversation_id -> (record, expiry time); order = least recently used first.
        self._entries: OrderedDict[str, tuple[Conversation, float]] = OrderedDict()
        self._tenants: dict[str, MemoryConversationStore] = {}

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired()
            return len(self._entries)

    def get(self, conversation_id: str) -> Conversation | None:
        validate_conversation_id(conversation_id)
        with self._lock:
            self._drop_expired()
            entry = self._entries.get(conversation_id)
            if entry is None:
                return None
            self._entries.move_to_end(conversation_id)
            return entry[0]

    def append_turn(
        self, conversation_id: str, user_text: str, assistant_text: str, *, voice: ConversationVoice | None = None
    ) -> Conversation:
        return self._update(conversation_id, lambda c: c.with_turn(user_text, assistant_text, voice, self.max_messages))

    def set_voice(self, conversation_id: str, voice: ConversationVoice) -> Conversation:
        return self._update(conversation_id, lambda c: c.with_voice(voice))

    def delete(self, conversation_id: str) -> bool:
        validate_conversation_id(conversation_id)
        with self._lock:
            self._drop_expired()
            return self._entries.pop(conversation_id, None) is not None

    def ping(self) -> None:
        pass

    def for_tenant(self, tenant: str | None) -> "MemoryConversationStore":
        """The tenant's own store, with the same limits (so one tenant never evicts another's); None: this one."""
        tenant = validate_tenant(tenant)
        if tenant is None:
            return self
        with self._lock:
            store = self._tenants.get(tenant)
            if store is None:
                store = self._tenants[tenant] = MemoryConversationStore(
                    ttl_s=self.ttl_s,
                    max_conversations=self.max_conversations,
                    max_messages=self.max_messages,
                    clock=self._clock,
                )
            return store

    def _update(self, conversation_id: str, change: Callable[[Conversation], Conversation]) -> Conversation:
        validate_conversation_id(conversation_id)
        with self._lock:
            self._drop_expired()
            current = self._entries.get(conversation_id)
            updated = change(current[0] if current else new_conversation(conversation_id))
            self._entries[conversation_id] = (updated, self._clock() + self.ttl_s)
            self._entries.move_to_end(conversation_id)
            while len(self._entries) > self.max_conversations:
                self._entries.popitem(last=False)
            return updated

    def _drop_expired(self) -> None:
        # Entries are kept in use order, not expiry order, so scan them all: cheap at these sizes.
        now = self._clock()
        for conversation_id in [cid for cid, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[conversation_id]
