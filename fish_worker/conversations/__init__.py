"""Conversations: the chat history and the voice a `conversation_id` keeps across turns and workers.

    store = make_conversation_store(redis_url=os.environ.get("REDIS_URL"), ttl_s=3600, max_conversations=1000)
    conversation = store.get(conversation_id)            # None when new, expired or deleted
    store.append_turn(conversation_id, user_text, reply, voice=voice)   # one atomic write
    store.delete(conversation_id)

Two backends behind one Protocol: in-process (default; bounded, TTL) and Redis (shared by all workers).
Any failure of the store raises ConversationStoreError; history is never silently dropped.
"""

from fish_worker.conversations.factory import make_conversation_store
from fish_worker.conversations.memory_store import MemoryConversationStore
from fish_worker.conversations.model import (
    MAX_CONVERSATION_ID_LENGTH,
    Conversation,
    ConversationVoice,
    InvalidConversationIdError,
    Message,
    validate_conversation_id,
)
from fish_worker.conversations.redis_store import RedisConversationStore
from fish_worker.conversations.store import (
    DEFAULT_MAX_MESSAGES,
    ConversationStore,
    ConversationStoreError,
)

__all__ = [
    "DEFAULT_MAX_MESSAGES",
    "MAX_CONVERSATION_ID_LENGTH",
    "Conversation",
    "ConversationStore",
    "ConversationStoreError",
    "ConversationVoice",
    "InvalidConversationIdError",
    "MemoryConversationStore",
    "Message",
    "RedisConversationStore",
    "make_conversation_store",
    "validate_conversation_id",
]
