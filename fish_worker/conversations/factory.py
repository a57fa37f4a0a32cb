"""Picks the conversation store a worker uses: Redis when configured, else in-process.

Kept apart from store.py, which both backends import, so no module imports one that imports it back.
"""

from __future__ import annotations

from fish_worker.conversations.memory_store import MemoryConversationStore
from fish_worker.conversations.redis_store import RedisConversationStore
from fish_worker.conversations.store import DEFAULT_MAX_MESSAGES, ConversationStore


def make_conversation_store(
    redis_url: str | None,
    ttl_s: int,
    max_conversations: int,
    *,
    max_messages: int = DEFAULT_MAX_MESSAGES,
) -> ConversationStore:
    """Redis when `redis_url` is set (shared by all workers), else in-process.

    `max_conversations` bounds only the in-process store; Redis is bounded by its own memory policy.
    """
    if redis_url:
        return RedisConversationStore(redis_url, ttl_s=ttl_s, max_messages=max_messages)
    return MemoryConversationStore(ttl_s=ttl_s, max_conversations=max_conversations, max_messages=max_messages)
