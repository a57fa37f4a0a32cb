"""Chat mode and conversations through the job handler, on the tiny checkpoint and the tiny chat model:
chat turns (whole and streamed), tts mode, mode errors, voice and history kept per conversation
(in-process store), TTL expiry, ending a conversation, and store failures reported as job errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fish_worker.dialogue.llm import ChatModel
from fish_worker.dialogue.turns import ConversationService
from fish_worker.conversations import ConversationStoreError, MemoryConversationStore, RedisConversationStore
from fish_worker.engine.generation import VoicePrompt
from fish_worker.jobs.runner import JobRunner
from fish_worker.jobs.inputs import JobInput
from fish_worker.settings import ChatSettings
from fish_worker.tts.requests import SpeechChunk
from fish_worker.dialogue.spoken_reply import TextDelta
from fish_worker.text.sentences import split_sentences
from helpers import FRAMES, FakeClock, expected_audio, expected_reply, free_port, reference_prompt, run_job, wav_b64

SAMPLES_PER_FRAME = 2048
HELLO = "Hello, how are you?"


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    return ChatModel.load(tiny_chat_model_dir, device="cpu")


@pytest.fixture(scope="module")
def chat_settings(settings, tiny_chat_model_dir):
    return settings.model_copy(update={"chat": ChatSettings(model_dir=tiny_chat_model_dir, frames_per_sentence=FRAMES)})


def make_runner(service, chat_settings, chat_model=None, store=None) -> JobRunner:
    store = store if store is not None else MemoryConversationStore(ttl_s=60, max_conversations=10)
    return JobRunner(
        service, chat_settings, ConversationService(service, store, chat=chat_model, settings=chat_settings)
    )


@pytest.fixture
def store():
    return MemoryConversationStore(ttl_s=60, max_conversations=10)


@pytest.fixture
def chat_runner(service, chat_settings, chat_model, store):
    return make_runner(service, chat_settings, chat_model, store)


# --- chat turns ---------------------------------------------------------------------------------------------


def test_chat_turn_replies_and_speaks_the_reply(chat_runner, chat_model, chat_settings, service):
    [out] = run_job(chat_runner, {"message": HELLO, "max_tokens": 40, "seed": 3})
    reply = expected_reply(chat_model, chat_settings, [{"role": "user", "content": HELLO}], seed=3)
    assert reply.strip() and out["text"] == reply
    sentences = split_sentences(reply, chat_settings.sentence_max_chars)
    assert len(out["audio"]) == len(sentences) * FRAMES * SAMPLES_PER_FRAME
    assert out["audio"] == expected_audio(service, reply, seed=3, voice=None)
    assert out["seed"] == 3 and out["sample_rate"] == 44100


def test_streamed_chat_turn_sends_deltas_then_each_sentence_in_order(chat_runner, chat_model, chat_settings):
    chunks = run_job(chat_runner, {"message": HELLO, "max_tokens": 40, "seed": 5, "stream": True})
    reply = expected_reply(chat_model, chat_settings, [{"role": "user", "content": HELLO}], seed=5)
    deltas = [(i, c["text_delta"]) for i, c in enumerate(chunks) if "text_delta" in c]
    spoken = [(i, c) for i, c in enumerate(chunks) if "audio" in c]
    assert "".join(d for _, d in deltas) == reply
    sentences = split_sentences(reply, chat_settings.sentence_max_chars)
    assert len(sentences) >= 2, "seed 5 should give a reply of several sentences"
    assert [c["text"] for _, c in spoken] == sentences
    assert [c["index"] for _, c in spoken] == list(range(len(sentences)))
    assert chunks[0].keys() == {"text_delta"}  # the text starts before any audio ...
    assert deltas[-1][0] < spoken[-1][0]  # ... and is all out before the final audio
    for position, chunk in spoken:  # a sentence's audio never comes before its text
        assert chunk["text"].split()[-1] in "".join(d for i, d in deltas if i < position)


def test_first_sentence_is_spoken_while_the_model_is_still_writing(service, chat_settings, store):
    heard_first = threading.Event()

    class ScriptedChat:
        """Writes two sentences, then waits until the first one has been heard before it finishes."""

        def stream_reply(self, messages, **options):
            yield "The first sentence is here. "
            yield "The second one"
            self.waited = heard_first.wait(timeout=30)
            yield " ends the reply."

    chat = ScriptedChat()
    conversations = ConversationService(service, store, chat=chat, settings=chat_settings)
    request = JobInput(message=HELLO, seed=1, mode="chat").to_turn("chat", chat_settings.chat.frames_per_sentence)
    events = []
    for event in conversations.turn(request, threading.Event()):
        events.append(event)
        if isinstance(event, SpeechChunk) and event.index == 0:
            heard_first.set()
    assert chat.waited, "sentence 1 was not delivered while the model was still writing"
    assert [e.text for e in events if isinstance(e, SpeechChunk)] == [
        "The first sentence is here.",
        "The second one ends the reply.",
    ]
    assert (
        "".join(e.text for e in events if isinstance(e, TextDelta))
        == "The first sentence is here. The second one ends the reply."
    )


# --- modes --------------------------------------------------------------------------------------------------


def test_tts_mode_speaks_the_message_as_plain_jobs_do(chat_runner, runner):
    job = {"message": "Speak this as it is. Two sentences.", "max_tokens": 4, "seed": 2}
    [plain] = run_job(runner, job)
    [as_tts] = run_job(chat_runner, {**job, "mode": "tts"})
    assert as_tts == plain
    assert plain["text"] == job["message"]


def test_default_mode_is_chat_with_a_chat_model_and_tts_without(service, chat_settings, chat_runner):
    job = {"message": HELLO, "max_tokens": 4, "seed": 2}
    [chat_out] = run_job(chat_runner, job)
    [tts_out] = run_job(make_runner(service, chat_settings), job)
    assert tts_out["text"] == HELLO and chat_out["text"] != HELLO


@pytest.mark.parametrize(
    ("job_input", "expected"),
    [
        ({"message": "hi", "mode": "chat"}, "mode: chat needs a chat model; set FISH_CHAT_MODEL_DIR"),
        ({"message": "hi", "mode": "talk"}, "mode: Input should be 'chat' or 'tts'"),
        ({"message": "hi", "mode": "tts", "system_prompt": "Be brief."}, "system_prompt: is only used in chat mode"),
        ({"message": "hi", "system_prompt": ""}, "system_prompt: String should have at least 1 character"),
        ({"action": "end_conversation"}, "conversation_id: Field required"),
        ({"action": "end_conversation", "conversation_id": "a b"}, "conversation_id: String should match pattern"),
        ({"action": "end_conversation", "conversation_id": "c", "message": "hi"}, "message: unknown field"),
    ],
)
def test_mode_and_action_errors_name_the_field(service, chat_settings, job_input, expected):
    [out] = run_job(make_runner(service, chat_settings), job_input)
    assert out == {"error": out["error"]} and out["error"].startswith(expected), out


def test_message_too_long_for_the_chat_model_is_an_input_error(chat_runner):
    [out] = run_job(chat_runner, {"message": "word " * 390, "max_tokens": 4})
    assert out["error"].startswith("message: the message is too long for the chat model")


# --- conversations ------------------------------------------------------------------------------------------


def test_conversation_keeps_history_and_the_reference_voice(chat_runner, store, service, chat_model, chat_settings):
    reference = wav_b64(seconds=1.0, sample_rate=22050)
    [one] = run_job(
        chat_runner,
        {
            "message": "What's the weather?",
            "conversation_id": "c-1",
            "max_tokens": 20,
            "seed": 1,
            "reference_audio": reference,
            "reference_text": "A reference.",
        },
    )
    [two] = run_job(
        chat_runner, {"message": "And what about tomorrow?", "conversation_id": "c-1", "max_tokens": 20, "seed": 2}
    )
    history = [{"role": "user", "content": "What's the weather?"}, {"role": "assistant", "content": one["text"]}]
    reply = expected_reply(
        chat_model,
        chat_settings,
        history + [{"role": "user", "content": "And what about tomorrow?"}],
        seed=2,
        max_tokens=20,
    )
    assert two["text"] == reply  # the model saw turn 1
    voice = reference_prompt(service, reference, "A reference.")
    assert two["audio"] == expected_audio(service, reply, seed=2, voice=voice)  # spoken in the reference voice
    conversation = store.get("c-1")
    assert conversation.turns == 2 and conversation.history()[-1] == {"role": "assistant", "content": reply}
    assert conversation.voice.source == "reference" and conversation.voice.text == "A reference."
    assert np.array_equal(conversation.voice.codes, voice.codes.numpy())


def test_conversation_without_reference_keeps_its_first_reply_voice(chat_runner, store, service):
    one = run_job(
        chat_runner, {"message": HELLO, "conversation_id": "c-2", "max_tokens": 20, "seed": 4, "stream": True}
    )
    first = next(c for c in one if "audio" in c)
    kept = store.get("c-2").voice
    assert kept.source == "first_reply" and kept.text == first["text"] and kept.codes.shape[1] == FRAMES
    # tts mode in the same conversation speaks in that voice too, without any reference.
    [two] = run_job(
        chat_runner, {"message": "Now say this.", "mode": "tts", "conversation_id": "c-2", "max_tokens": 4, "seed": 6}
    )
    voice = VoicePrompt(text=kept.text, codes=torch_codes(kept.codes))
    assert two["audio"] == expected_audio(service, "Now say this.", seed=6, voice=voice, frames=4)
    assert two["audio"] != expected_audio(service, "Now say this.", seed=6, voice=None, frames=4)
    assert store.get("c-2").turns == 1  # tts turns keep the voice, not the chat history


def test_tts_conversation_keeps_its_first_voice(chat_runner, store, service):
    [one] = run_job(
        chat_runner,
        {"message": "First words here.", "mode": "tts", "conversation_id": "c-3", "max_tokens": 4, "seed": 1},
    )
    kept = store.get("c-3").voice
    assert kept.source == "first_reply" and kept.text == "First words here."
    [two] = run_job(
        chat_runner, {"message": "More words.", "mode": "tts", "conversation_id": "c-3", "max_tokens": 4, "seed": 1}
    )
    assert two["audio"] == expected_audio(
        service, "More words.", seed=1, frames=4, voice=VoicePrompt(text=kept.text, codes=torch_codes(kept.codes))
    )


def test_expired_conversation_starts_afresh(service, chat_settings, chat_model):
    clock = FakeClock()
    store = MemoryConversationStore(ttl_s=30, max_conversations=10, clock=clock)
    runner = make_runner(service, chat_settings, chat_model, store)
    run_job(runner, {"message": HELLO, "conversation_id": "c-ttl", "max_tokens": 8, "seed": 1})
    clock.now += 29
    run_job(runner, {"message": "Still there?", "conversation_id": "c-ttl", "max_tokens": 8, "seed": 1})
    assert store.get("c-ttl").turns == 2
    clock.now += 31
    run_job(runner, {"message": "Anyone?", "conversation_id": "c-ttl", "max_tokens": 8, "seed": 1})
    conversation = store.get("c-ttl")
    assert conversation.turns == 1 and conversation.history()[0]["content"] == "Anyone?"


def test_end_conversation_forgets_history_and_voice(chat_runner, store):
    run_job(chat_runner, {"message": HELLO, "conversation_id": "c-end", "max_tokens": 8, "seed": 1})
    assert store.get("c-end").voice is not None
    assert run_job(chat_runner, {"action": "end_conversation", "conversation_id": "c-end"}) == [
        {"conversation_id": "c-end", "ended": True}
    ]
    assert store.get("c-end") is None
    assert run_job(chat_runner, {"action": "end_conversation", "conversation_id": "c-end"}) == [
        {"conversation_id": "c-end", "ended": False}
    ]


def test_unreachable_store_fails_the_job_clearly(service, chat_settings, chat_model):
    store = RedisConversationStore(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, connect_timeout_s=1)
    runner = make_runner(service, chat_settings, chat_model, store)
    for job in (
        {"message": HELLO, "conversation_id": "c-down", "max_tokens": 8},
        {"message": HELLO, "conversation_id": "c-down", "max_tokens": 8, "stream": True},
        {"action": "end_conversation", "conversation_id": "c-down"},
    ):
        [out] = run_job(runner, job)
        assert out.keys() == {"error"} and out["error"].startswith("conversation store unavailable: ConnectionError")
    [ok] = run_job(runner, {"message": HELLO, "max_tokens": 8, "seed": 1})  # no conversation: unaffected
    assert ok["text"] and "error" not in ok


def test_failed_turn_write_fails_the_job_instead_of_losing_the_turn(service, chat_settings, chat_model):
    class FailingWrites(MemoryConversationStore):
        def append_turn(self, *args, **kwargs):
            raise ConversationStoreError("conversation store unavailable: TimeoutError: write timed out")

    runner = make_runner(service, chat_settings, chat_model, FailingWrites(ttl_s=60, max_conversations=10))
    chunks = run_job(runner, {"message": HELLO, "conversation_id": "c-w", "max_tokens": 8, "stream": True})
    assert chunks[-1] == {"error": "conversation store unavailable: TimeoutError: write timed out"}


def torch_codes(codes: np.ndarray):
    import torch

    return torch.from_numpy(np.array(codes)).to(torch.int)
