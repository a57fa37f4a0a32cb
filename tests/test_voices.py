"""Saved voices: save/load/list/delete, strict ids, atomic writes."""

import os
import time

import numpy as np
import pytest

from fish_worker.tts import voices
from fish_worker.tts.voices import VoiceNotFoundError, VoiceStore, validate_voice_id


def tokens(num_frames=50, seed=0):
    return np.random.default_rng(seed).integers(0, 4096, size=(10, num_frames), dtype=np.int64)


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path / "voices")  # created on first save


def test_save_then_load_gives_back_tokens_text_and_time(store):
    before = time.time()
    info = store.save("alice", tokens(), "Hello there, I'm Alice.")
    assert (info.voice_id, info.text, info.num_codebooks, info.num_frames) == (
        "alice",
        "Hello there, I'm Alice.",
        10,
        50,
    )
    loaded = store.load("alice")
    np.testing.assert_array_equal(loaded.tokens, tokens())
    assert loaded.tokens.dtype == np.int64
    assert loaded.text == "Hello there, I'm Alice."
    assert before <= loaded.created_at <= time.time()
    assert loaded.info == info


def test_title_is_kept_and_older_files_have_none(store):
    assert store.save("bob", tokens(), "Hi.", title="Bob — narrator").title == "Bob — narrator"
    assert store.load("bob").title == "Bob — narrator"
    assert [v.title for v in store.list()] == ["Bob — narrator"]
    # A file written before titles existed (no "title" array) still loads, untitled.
    np.savez(
        store.root / "old.npz",
        format_version=np.int64(1),
        tokens=tokens(),
        text=np.str_("Old."),
        created_at=np.float64(1.0),
    )
    assert store.load("old").title == "" and store.load("old").text == "Old."


def test_unicode_transcript_survives(store):
    store.save("yuki", tokens(), "こんにちは、世界 — ça va?")
    assert store.load("yuki").text == "こんにちは、世界 — ça va?"


def test_list_is_sorted_and_delete_removes(store):
    assert store.list() == []
    for name in ("bob", "alice", "carol-2.v1"):
        store.save(name, tokens(), f"I am {name}")
    assert [v.voice_id for v in store.list()] == ["alice", "bob", "carol-2.v1"]
    store.delete("bob")
    assert [v.voice_id for v in store.list()] == ["alice", "carol-2.v1"]
    assert not store.exists("bob") and store.exists("alice")
    with pytest.raises(VoiceNotFoundError, match="bob"):
        store.load("bob")
    with pytest.raises(VoiceNotFoundError):
        store.delete("bob")


def test_save_replaces_unless_told_not_to(store):
    store.save("alice", tokens(seed=1), "first")
    store.save("alice", tokens(seed=2), "second")
    assert store.load("alice").text == "second"
    with pytest.raises(FileExistsError):
        store.save("alice", tokens(), "third", overwrite=False)
    assert store.load("alice").text == "second"


@pytest.mark.parametrize(
    "bad_id",
    [
        "../x",
        "/etc",
        "/etc/passwd",
        "",
        "a" * 65,
        "..",
        ".",
        ".hidden",
        "a..b",
        "a/b",
        "a\\b",
        "-dash",
        "_under",
        "sp ace",
        "tab\t",
        "new\nline",
        "nul\x00",
        "é",
        "a:b",
        None,
        5,
    ],
)
def test_bad_ids_are_rejected_with_a_clear_error(store, bad_id):
    with pytest.raises(ValueError, match="voice_id"):
        validate_voice_id(bad_id)
    for call in (
        lambda: store.save(bad_id, tokens(), "x"),
        lambda: store.load(bad_id),
        lambda: store.delete(bad_id),
        lambda: store.exists(bad_id),
    ):
        with pytest.raises(ValueError, match="voice_id"):
            call()


def test_longest_and_shortest_good_ids(store):
    for good in ("a", "7", "a" * 64, "A.b-c_d"):
        assert validate_voice_id(good) == good
        store.save(good, tokens(), "ok")
    assert len(store.list()) == 4


@pytest.mark.parametrize(
    "bad_tokens, message",
    [
        (np.zeros((10, 5), dtype=np.float32), "integers"),
        (np.zeros(5, dtype=np.int64), "shape"),
        (np.zeros((10, 0), dtype=np.int64), "shape"),
    ],
)
def test_bad_tokens_are_rejected(store, bad_tokens, message):
    with pytest.raises(ValueError, match=message):
        store.save("alice", bad_tokens, "x")
    assert store.list() == []


def test_a_crash_while_writing_leaves_the_old_voice_and_no_debris(store, monkeypatch):
    store.save("alice", tokens(seed=1), "original")

    def crash(*args, **kwargs):
        raise OSError("disk yanked mid-write")

    monkeypatch.setattr(voices.np, "savez", crash)
    with pytest.raises(OSError, match="yanked"):
        store.save("alice", tokens(seed=2), "replacement")
    monkeypatch.undo()

    assert store.load("alice").text == "original"
    assert os.listdir(store.root) == ["alice.npz"]


def test_stray_files_in_the_directory_are_not_voices(store):
    store.save("alice", tokens(), "hi")
    (store.root / ".tmp-abc.npz").write_bytes(b"half a voice")
    (store.root / "notes.txt").write_text("not a voice")
    assert [v.voice_id for v in store.list()] == ["alice"]


def test_each_tenant_has_its_own_voices_and_the_default_layout_is_unchanged(store):
    tokens = np.ones((2, 3), dtype=np.int64)
    store.save("shared-name", tokens, "default's")
    alice = store.for_tenant("alice")
    assert store.for_tenant(None) is store
    assert alice.list() == [] and not alice.exists("shared-name")
    alice.save("shared-name", tokens * 2, "alice's")
    assert alice.load("shared-name").text == "alice's" and store.load("shared-name").text == "default's"
    assert [v.voice_id for v in store.list()] == ["shared-name"]  # the tenants' directory is not a voice
    assert (store.root / "shared-name.npz").is_file()
    assert (store.root / "tenants" / "alice" / "shared-name.npz").is_file()
    with pytest.raises(VoiceNotFoundError):
        store.for_tenant("bob").delete("shared-name")
    with pytest.raises(ValueError, match="invalid tenant"):
        store.for_tenant("a/b")


def test_store_refuses_new_voices_beyond_its_cap_but_allows_overwrites(tmp_path):
    capped = VoiceStore(tmp_path / "capped", max_voices=2)
    capped.save("a", tokens(), "A")
    capped.save("b", tokens(), "B")
    with pytest.raises(voices.VoiceStoreFullError, match="limit of 2 voices.*FISH_MAX_VOICES"):
        capped.save("c", tokens(), "C")
    capped.save("a", tokens(seed=1), "A again")  # replacing a voice adds none
    capped.delete("b")
    capped.save("c", tokens(), "C")
    assert capped.voice_ids() == ["a", "c"]


def test_pages_walk_every_voice_once_in_order(store):
    names = [f"v{i:02d}" for i in range(7)]
    for name in reversed(names):
        store.save(name, tokens(num_frames=2), name)
    seen, cursor = [], None
    while True:
        page, cursor = store.page(limit=3, after=cursor)
        seen.append([v.voice_id for v in page])
        if cursor is None:
            break
    assert seen == [names[0:3], names[3:6], names[6:7]]
    assert store.page(limit=7) == (store.list(), None)
