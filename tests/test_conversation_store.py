"""Conversation stores: in-process (TTL, LRU, delete) and Redis against a real redis-server (shared
across store instances and processes, TTL, atomic concurrent turns, failures reported, never hidden)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from fish_worker.conversations import (
    Conversation,
    ConversationStore,
    ConversationStoreError,
    ConversationVoice,
    InvalidConversationIdError,
    MemoryConversationStore,
    RedisConversationStore,
    make_conversation_store,
)
from helpers import FakeClock, free_port, start_redis_server, stop

REPO_ROOT = Path(__file__).resolve().parents[1]


def voice(seed: int = 0, source: str = "reference") -> ConversationVoice:
    codes = np.random.default_rng(seed).integers(0, 4096, size=(10, 37), dtype=np.int64)
    return ConversationVoice(codes=codes, text=f"reference transcript {seed}", source=source)


# --- the record -------------------------------------------------------------------------------------------


def test_voice_codes_survive_json_exactly():
    original = voice(3)
    conversation = Conversation(conversation_id="c", voice=original)
    restored = Conversation.model_validate_json(conversation.model_dump_json())
    assert restored == conversation
    assert restored.voice.codes.dtype == np.int64 and restored.voice.codes.shape == (10, 37)
    assert np.array_equal(restored.voice.codes, original.codes)


def test_voice_codes_are_a_read_only_copy():
    codes = np.zeros((2, 5), dtype=np.int32)
    v = ConversationVoice(codes=codes, text="x", source="first_reply")
    codes[0, 0] = 7  # the caller's array stays the caller's
    assert v.codes[0, 0] == 0
    with pytest.raises(ValueError):
        v.codes[0, 0] = 1


@pytest.mark.parametrize(
    "codes", [np.zeros((2, 3), dtype=np.float32), np.zeros(5, dtype=np.int32), np.zeros((2, 0), dtype=np.int32)]
)
def test_voice_rejects_codes_that_are_not_integer_codebooks_by_frames(codes):
    with pytest.raises(ValueError, match="codes"):
        ConversationVoice(codes=codes, text="x", source="reference")


@pytest.mark.parametrize("bad_id", ["", "a" * 129, "has space", "slash/", "semi;colon", "ünï", None, 12])
def test_bad_conversation_ids_are_refused_naming_the_field(bad_id):
    store = MemoryConversationStore(ttl_s=60, max_conversations=10)
    for call in (lambda: store.get(bad_id), lambda: store.append_turn(bad_id, "a", "b"), lambda: store.delete(bad_id)):
        with pytest.raises(InvalidConversationIdError, match="^conversation_id: "):
            call()
    assert issubclass(InvalidConversationIdError, ValueError)


def test_good_conversation_ids_are_accepted():
    store = MemoryConversationStore(ttl_s=60, max_conversations=10)
    for good_id in ["chat-123", "3f2b6c1e-8a7d-4c39-9f5e-0b1a2c3d4e5f", "user_1:session.2", "a" * 128]:
        store.append_turn(good_id, "hi", "hello")
        assert store.get(good_id) is not None


# --- behaviour every store shares ------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request) -> ConversationStore:
    if request.param == "memory":
        return MemoryConversationStore(ttl_s=60, max_conversations=10, max_messages=6)
    return RedisConversationStore(request.getfixturevalue("redis_url"), ttl_s=60, max_messages=6)


def test_turns_accumulate_and_the_voice_is_kept(store):
    assert store.get("chat-1") is None
    store.append_turn("chat-1", "What's the weather?", "Sunny.", voice=voice(1))
    store.append_turn("chat-1", "And what about tomorrow?", "Rainy.")
    conversation = store.get("chat-1")
    assert conversation.history() == [
        {"role": "user", "content": "What's the weather?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And what about tomorrow?"},
        {"role": "assistant", "content": "Rainy."},
    ]
    assert conversation.voice == voice(1)  # turn 2 passed no voice: turn 1's is kept
    assert conversation.turns == 2


def test_a_new_voice_replaces_the_old_one(store):
    store.append_turn("chat-1", "a", "b", voice=voice(1, source="first_reply"))
    store.append_turn("chat-1", "c", "d", voice=voice(2))
    assert store.get("chat-1").voice == voice(2)


def test_set_voice_creates_the_conversation_and_keeps_history(store):
    assert store.set_voice("chat-1", voice(1)).messages == ()
    store.append_turn("chat-1", "a", "b")
    store.set_voice("chat-1", voice(2))
    conversation = store.get("chat-1")
    assert conversation.voice == voice(2) and len(conversation.messages) == 2


def test_history_keeps_the_newest_messages_only(store):
    for turn in range(5):
        store.append_turn("chat-1", f"user {turn}", f"assistant {turn}")
    conversation = store.get("chat-1")
    assert [m.content for m in conversation.messages] == [
        "user 2",
        "assistant 2",
        "user 3",
        "assistant 3",
        "user 4",
        "assistant 4",
    ]
    assert conversation.turns == 5


def test_delete_forgets_history_and_voice(store):
    store.append_turn("chat-1", "a", "b", voice=voice(1))
    store.append_turn("chat-2", "c", "d")
    assert store.delete("chat-1") is True
    assert store.get("chat-1") is None
    assert store.delete("chat-1") is False
    assert store.get("chat-2") is not None  # others untouched
    assert store.append_turn("chat-1", "e", "f").turns == 1  # a fresh start, no old voice
    assert store.get("chat-1").voice is None


def test_returned_records_cannot_change_the_store(store):
    store.append_turn("chat-1", "a", "b")
    conversation = store.get("chat-1")
    with pytest.raises(ValidationError, match="frozen"):
        conversation.messages[0].content = "changed"
    history = conversation.history()
    history.append({"role": "user", "content": "sneaky"})
    assert len(store.get("chat-1").messages) == 2


# --- in-process store -------------------------------------------------------------------------------------


def test_tenants_never_see_each_others_conversations(store):
    alice, bob = store.for_tenant("alice"), store.for_tenant("bob")
    assert store.for_tenant(None) is store  # the default namespace is the store itself
    alice.append_turn("c1", "hi", "hello", voice=voice(1))
    assert bob.get("c1") is None and store.get("c1") is None
    assert bob.delete("c1") is False and store.delete("c1") is False
    bob.append_turn("c1", "yo", "hey")
    assert alice.get("c1").messages[0].content == "hi" and bob.get("c1").messages[0].content == "yo"
    assert store.for_tenant("alice").get("c1").voice == voice(1)  # a new view sees the same data
    assert alice.delete("c1") is True and bob.get("c1") is not None
    with pytest.raises(ValueError, match="invalid tenant"):
        store.for_tenant("../etc")


def test_redis_tenant_keys_cannot_collide_with_the_default_namespace(redis_url):
    store = RedisConversationStore(redis_url, ttl_s=60)
    assert store.for_tenant("alice").key("c1") == "fish-worker:conversation:tenant/alice/c1"
    assert store.key("c1") == "fish-worker:conversation:c1"  # unchanged layout for RunPod queue jobs


def test_memory_tenants_are_bounded_each_on_their_own():
    store = MemoryConversationStore(ttl_s=60, max_conversations=2)
    alice, bob = store.for_tenant("alice"), store.for_tenant("bob")
    for i in range(3):
        bob.append_turn(f"b{i}", "u", "a")
    alice.append_turn("a0", "u", "a")
    assert alice.get("a0") is not None and len(bob) == 2  # Bob's many never evict Alice's


def test_memory_conversations_expire_ttl_after_their_last_write():
    clock = FakeClock()
    store = MemoryConversationStore(ttl_s=60, max_conversations=10, clock=clock)
    store.append_turn("chat-1", "a", "b")
    clock.now += 59
    assert store.get("chat-1") is not None
    store.append_turn("chat-1", "c", "d")  # restarts the TTL
    clock.now += 59
    assert len(store.get("chat-1").messages) == 4
    clock.now += 1
    assert store.get("chat-1") is None
    assert len(store) == 0


def test_memory_store_evicts_the_least_recently_used():
    store = MemoryConversationStore(ttl_s=60, max_conversations=3)
    for name in ("a", "b", "c"):
        store.append_turn(name, "hi", "hello")
    store.get("a")  # "b" is now the least recently used
    store.append_turn("d", "hi", "hello")
    assert len(store) == 3
    assert store.get("b") is None
    assert all(store.get(name) is not None for name in ("a", "c", "d"))


def test_memory_store_serialises_concurrent_turns():
    store = MemoryConversationStore(ttl_s=60, max_conversations=10, max_messages=1000)
    threads = [
        threading.Thread(target=lambda w=w: [store.append_turn("chat-1", f"{w}-{i}", "ok") for i in range(50)])
        for w in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("chat-1").turns == 200 and len(store.get("chat-1").messages) == 400


def test_limits_are_validated():
    with pytest.raises(ValueError, match="ttl_s"):
        MemoryConversationStore(ttl_s=0, max_conversations=10)
    with pytest.raises(ValueError, match="max_conversations"):
        MemoryConversationStore(ttl_s=10, max_conversations=0)
    with pytest.raises(ValueError, match="max_messages"):
        MemoryConversationStore(ttl_s=10, max_conversations=1, max_messages=1)


# --- factory ----------------------------------------------------------------------------------------------


def test_factory_picks_memory_without_url_and_redis_with_one(redis_url):
    memory = make_conversation_store(None, ttl_s=30, max_conversations=5)
    assert isinstance(memory, MemoryConversationStore) and memory.max_conversations == 5 and memory.ttl_s == 30
    assert isinstance(make_conversation_store("", ttl_s=30, max_conversations=5), MemoryConversationStore)
    shared = make_conversation_store(redis_url, ttl_s=30, max_conversations=5)
    assert isinstance(shared, RedisConversationStore) and shared.ttl_s == 30
    shared.ping()
    for store in (memory, shared):
        assert isinstance(store, ConversationStore)


# --- Redis: a real server per test module -----------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_two_store_instances_share_a_conversation(redis_url):
    worker_a = RedisConversationStore(redis_url, ttl_s=60)
    worker_b = RedisConversationStore(redis_url, ttl_s=60)
    worker_a.append_turn("chat-123", "What's the weather?", "Sunny.", voice=voice(5, source="first_reply"))
    seen_by_b = worker_b.get("chat-123")
    assert seen_by_b.history()[0]["content"] == "What's the weather?"
    assert seen_by_b.voice == voice(5, source="first_reply")
    worker_b.append_turn("chat-123", "And what about tomorrow?", "Rainy.")
    assert worker_a.get("chat-123").turns == 2
    assert worker_a.delete("chat-123") and worker_b.get("chat-123") is None


def test_a_turn_written_by_another_process_is_seen_here(redis_url):
    turn_one = textwrap.dedent(f"""
        import numpy as np
        from fish_worker.conversations import ConversationVoice, RedisConversationStore
        store = RedisConversationStore({redis_url!r}, ttl_s=60)
        codes = np.arange(30, dtype=np.int32).reshape(3, 10)
        store.append_turn("chat-xproc", "What's the weather?", "Sunny.",
                          voice=ConversationVoice(codes=codes, text="Sunny.", source="first_reply"))
    """)
    subprocess.run([sys.executable, "-c", turn_one], cwd=REPO_ROOT, check=True, timeout=60)
    store = RedisConversationStore(redis_url, ttl_s=60)
    conversation = store.get("chat-xproc")
    assert conversation.history()[1] == {"role": "assistant", "content": "Sunny."}
    assert np.array_equal(conversation.voice.codes, np.arange(30).reshape(3, 10))
    assert conversation.voice.codes.dtype == np.int32


def test_redis_records_expire_ttl_after_their_last_write(redis_url, redis_client):
    store = RedisConversationStore(redis_url, ttl_s=100)
    store.append_turn("chat-1", "a", "b")
    key = store.key("chat-1")
    assert 99_000 < redis_client.pttl(key) <= 100_000
    redis_client.pexpire(key, 5_000)  # as if 95 s went by
    store.append_turn("chat-1", "c", "d")
    assert 99_000 < redis_client.pttl(key) <= 100_000  # the write restarted the TTL
    redis_client.pexpire(key, 1)  # and now let it run out
    time.sleep(0.05)
    assert store.get("chat-1") is None


def test_concurrent_turns_from_two_workers_are_all_kept(redis_url):
    stores = [RedisConversationStore(redis_url, ttl_s=60, max_messages=1000) for _ in range(2)]

    def worker(store: RedisConversationStore, name: str) -> None:
        for i in range(25):
            store.append_turn("chat-race", f"{name} asks {i}", f"{name} answer {i}")

    threads = [threading.Thread(target=worker, args=(store, f"w{n}")) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conversation = stores[0].get("chat-race")
    assert conversation.turns == 50 and len(conversation.messages) == 100
    # Each exchange stayed together: no other worker's turn landed between a question and its answer.
    for question, answer in zip(conversation.messages[::2], conversation.messages[1::2]):
        assert question.content.replace("asks", "answer") == answer.content


def test_unreadable_record_is_an_error_not_an_empty_conversation(redis_url, redis_client):
    store = RedisConversationStore(redis_url, ttl_s=60)
    redis_client.set(store.key("chat-1"), b"{not json")
    with pytest.raises(ConversationStoreError, match="unreadable record for conversation_id 'chat-1'"):
        store.get("chat-1")
    with pytest.raises(ConversationStoreError):
        store.append_turn("chat-1", "a", "b")  # never overwrites history it could not read
    assert redis_client.get(store.key("chat-1")) == b"{not json"


def test_wrong_key_type_is_reported(redis_url, redis_client):
    store = RedisConversationStore(redis_url, ttl_s=60)
    redis_client.rpush(store.key("chat-1"), "x")
    with pytest.raises(ConversationStoreError, match="conversation store unavailable: ResponseError"):
        store.get("chat-1")


def test_unreachable_redis_is_a_clear_error():
    store = RedisConversationStore(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, connect_timeout_s=1)
    for call in (
        store.ping,
        lambda: store.get("chat-1"),
        lambda: store.append_turn("chat-1", "a", "b"),
        lambda: store.delete("chat-1"),
    ):
        with pytest.raises(ConversationStoreError, match="conversation store unavailable"):
            call()


def test_redis_going_down_mid_conversation_is_a_clear_error(tmp_path):
    process, url = start_redis_server(tmp_path)
    try:
        store = RedisConversationStore(url, ttl_s=60, connect_timeout_s=1)
        store.append_turn("chat-1", "a", "b")
    finally:
        stop(process)
    with pytest.raises(ConversationStoreError, match="conversation store unavailable"):
        store.get("chat-1")
    with pytest.raises(ConversationStoreError, match="conversation store unavailable"):
        store.append_turn("chat-1", "c", "d")


def test_bad_redis_url_is_a_clear_error():
    with pytest.raises(ConversationStoreError, match="bad REDIS_URL"):
        RedisConversationStore("http://example.com", ttl_s=60)
