"""Redis conversation store: shared by every worker, so any worker can serve a conversation's next turn.

One key per conversation holds the whole record as one JSON document, written with SET EX, so a
turn's history and voice land together or not at all and the TTL restarts on every write.
Read-modify-write runs under WATCH: if another worker writes the same conversation in between,
the transaction aborts and is retried on the fresh record, so concurrent turns never overwrite
each other.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from pydantic import ValidationError

from fish_worker.conversations.model import Conversation, ConversationVoice, new_conversation, validate_conversation_id
from fish_worker.conversations.store import DEFAULT_MAX_MESSAGES, ConversationStoreError, check_limits
from fish_worker.tenancy import validate_tenant

KEY_PREFIX = "fish-worker:conversation:"
# Contention is two workers on one conversation at once, rare and short: a few retries suffice.
MAX_WRITE_ATTEMPTS = 20


class RedisConversationStore:
    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        key_prefix: str = KEY_PREFIX,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 10.0,
    ):
        self.max_messages = check_limits(ttl_s, max_messages)
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        try:
            # Timeouts so a dead or unreachable Redis fails the job promptly instead of hanging it.
            self._client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s)
        except ValueError as exc:
            raise ConversationStoreError(f"conversation store unavailable: bad REDIS_URL: {exc}") from exc

    def key(self, conversation_id: str) -> str:
        return self.key_prefix + validate_conversation_id(conversation_id)

    def get(self, conversation_id: str) -> Conversation | None:
        key = self.key(conversation_id)
        with _store_errors():
            return self._decode(conversation_id, self._client.get(key))

    def append_turn(
        self, conversation_id: str, user_text: str, assistant_text: str, *, voice: ConversationVoice | None = None
    ) -> Conversation:
        return self._update(conversation_id, lambda c: c.with_turn(user_text, assistant_text, voice, self.max_messages))

    def set_voice(self, conversation_id: str, voice: ConversationVoice) -> Conversation:
        return self._update(conversation_id, lambda c: c.with_voice(voice))

    def delete(self, conversation_id: str) -> bool:
        key = self.key(conversation_id)
        with _store_errors():
            return self._client.delete(key) == 1

    def ping(self) -> None:
        with _store_errors():
            self._client.ping()

    def for_tenant(self, tenant: str | None) -> "RedisConversationStore":
        """The tenant's view: same connection, keys under `<prefix>tenant/<tenant>/`; None: this store.

        Conversation ids never contain "/", so no tenant's key can equal the default namespace's.
        """
        tenant = validate_tenant(tenant)
        if tenant is None:
            return self
        view = copy.copy(self)
        view.key_prefix = f"{self.key_prefix}tenant/{tenant}/"
        return view

    def close(self) -> None:
        self._client.close()

    def _update(self, conversation_id: str, change: Callable[[Conversation], Conversation]) -> Conversation:
        key = self.key(conversation_id)
        with _store_errors(), self._client.pipeline(transaction=True) as pipe:
            for attempt in range(MAX_WRITE_ATTEMPTS):
                try:
                    pipe.watch(key)  # the pipeline now runs commands at once, until multi()
                    current = self._decode(conversation_id, pipe.get(key))
                    updated = change(current or new_conversation(conversation_id))
                    pipe.multi()
                    pipe.set(key, updated.model_dump_json(), ex=self.ttl_s)
                    pipe.execute()  # raises WatchError if the key changed since watch()
                    return updated
                except redis.WatchError:
                    pipe.reset()
                    time.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # de-synchronise the writers
        raise ConversationStoreError(
            f"conversation store busy: conversation_id {conversation_id!r} kept changing "
            f"during {MAX_WRITE_ATTEMPTS} attempts to write it"
        )

    @staticmethod
    def _decode(conversation_id: str, data: bytes | str | None) -> Conversation | None:
        if data is None:
            return None
        try:
            conversation = Conversation.model_validate_json(data)
        except ValidationError as exc:
            raise ConversationStoreError(
                f"conversation store holds an unreadable record for conversation_id {conversation_id!r}: {exc}"
            ) from exc
        if conversation.conversation_id != conversation_id:
            raise ConversationStoreError(
                f"conversation store holds the record of {conversation.conversation_id!r} "
                f"under conversation_id {conversation_id!r}"
            )
        return conversation


@contextmanager
def _store_errors() -> Iterator[None]:
    """Report any Redis failure (connection, timeout, auth, wrong key type ...) as ConversationStoreError."""
    try:
        yield
    except redis.RedisError as exc:
        raise ConversationStoreError(f"conversation store unavailable: {type(exc).__name__}: {exc}") from exc
