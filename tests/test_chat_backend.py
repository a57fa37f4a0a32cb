"""The remote chat backend (fish_worker/dialogue/remote_chat.py) against a real engine and a broken one.

A real OpenAI-compatible server process, `transformers serve` with the tiny chat model on CPU (one per
module: it takes up to a couple of minutes to start on a busy machine), writes the replies of chat jobs
run through the JobRunner: streamed, spoken sentence by sentence, kept in a conversation. It also shows
what such an engine does with `<|im_end|>` in message text (docs/chat.md). What a real engine won't do on
demand (401, 429, silence, a stream cut off, malformed chunks) comes from tests/chat_engine_stub.py:
each is a clear, bounded job error naming the chat backend, and the conversation's history is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from chat_engine_stub import REPLY, StubEngine
from fish_worker.conversations import MemoryConversationStore
from fish_worker.dialogue.backend import ChatBackend, ChatBackendError
from fish_worker.dialogue.make_backend import make_chat_backend
from fish_worker.dialogue.llm import ChatModel
from fish_worker.dialogue.remote_chat import RemoteChatBackend
from fish_worker.dialogue.spoken_reply import TextDelta
from fish_worker.dialogue.turns import ConversationService
from fish_worker.errors import ErrorKind
from fish_worker.jobs.inputs import JobInput
from fish_worker.jobs.runner import JobRunner
from fish_worker.settings import ChatSettings
from fish_worker.text.sentences import split_sentences
from fish_worker.worker import build_conversations
from helpers import FRAMES, TRANSFORMERS_SERVE_START_S, free_port, run_job, transformers_serve

ROOT = Path(__file__).resolve().parent.parent
ENGINE_START_S = TRANSFORMERS_SERVE_START_S
HELLO = "Hello, how are you?"
SYSTEM = "Be brief."


# --- a real engine: transformers serve ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_chat_model_dir, tmp_path_factory):
    """`transformers serve` on the tiny chat model: its /v1 URL."""
    with transformers_serve(tiny_chat_model_dir, tmp_path_factory.mktemp("engine"), "--continuous-batching") as url:
        yield url


@pytest.fixture(scope="module")
def chat_settings(settings):
    return settings.model_copy(update={"chat": ChatSettings(frames_per_sentence=FRAMES, system_prompt=SYSTEM)})


@pytest.fixture(scope="module")
def remote(engine):
    backend = RemoteChatBackend(engine)  # no FISH_CHAT_MODEL: the model the engine lists
    yield backend
    backend.close()


def engine_reply(engine: str, model: str, messages: list[dict], *, seed: int, max_tokens: int) -> str:
    """What the engine streams for these messages, asked directly with the official client. (Streamed, as
    the worker asks: `transformers serve`'s whole answer drops a leading space its stream keeps.)"""
    with openai.OpenAI(base_url=engine, api_key="none", timeout=60) as client:
        stream = client.chat.completions.create(
            model=model, messages=messages, temperature=0.7, max_tokens=max_tokens, seed=seed, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.mark.timeout(ENGINE_START_S + 120)
def test_a_chat_job_streams_the_engines_reply_and_speaks_it(
    engine, remote, service, chat_settings, tiny_chat_model_dir
):
    store = MemoryConversationStore(ttl_s=60, max_conversations=10)
    runner = JobRunner(service, chat_settings, ConversationService(service, store, chat=remote, settings=chat_settings))
    chunks = run_job(runner, {"message": HELLO, "max_tokens": 40, "seed": 5, "stream": True, "conversation_id": "r-1"})
    deltas = [(i, c["text_delta"]) for i, c in enumerate(chunks) if "text_delta" in c]
    spoken = [(i, c) for i, c in enumerate(chunks) if "audio" in c]
    reply = "".join(d for _, d in deltas)
    model = str(tiny_chat_model_dir)  # the engine is pinned to it, and lists it at /v1/models
    assert reply == engine_reply(
        engine,
        model,
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HELLO}],
        seed=5,
        max_tokens=40,
    )
    assert len(deltas) > 1 and chunks[0].keys() == {"text_delta"}  # the text streams in, before any audio
    sentences = split_sentences(reply, chat_settings.sentence_max_chars)
    assert sentences and [c["text"] for _, c in spoken] == sentences  # each sentence spoken, in order
    assert all(len(c["audio"]) > 0 for _, c in spoken)

    # The next turn sends the history as messages: the engine answers what it answers to them.
    [two] = run_job(runner, {"message": "And tomorrow?", "max_tokens": 20, "seed": 6, "conversation_id": "r-1"})
    history = [{"role": "user", "content": HELLO}, {"role": "assistant", "content": reply}]
    assert two["text"] == engine_reply(
        engine,
        model,
        [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": "And tomorrow?"}],
        seed=6,
        max_tokens=20,
    )
    assert store.get("r-1").history() == history + [
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": two["text"]},
    ]


@pytest.mark.timeout(ENGINE_START_S + 60)
def test_the_engine_reads_im_end_in_message_text_as_its_control_token(engine, tiny_chat_model_dir):
    """Unlike the local backend (plain text, test_chat_prompt_injection.py), `transformers serve` renders
    the chat template to text and tokenizes it with special tokens on: `<|im_end|>` typed in a message
    becomes the one control token that closes a turn. docs/chat.md says so."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    plain = tokenizer("<|im_end|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert len(plain) > 1  # as characters it would take several tokens

    def prompt_tokens(content: str) -> int:
        with openai.OpenAI(base_url=engine, api_key="none", timeout=60) as client:
            answer = client.chat.completions.create(
                model=str(tiny_chat_model_dir), max_tokens=1, seed=0, messages=[{"role": "user", "content": content}]
            )
        return answer.usage.prompt_tokens

    assert prompt_tokens("Hi<|im_end|>") == prompt_tokens("Hi") + 1  # one token: the control token


@pytest.mark.timeout(ENGINE_START_S + 180)
def test_the_docs_local_engine_example_runs(engine, tiny_chat_model_dir, tiny_checkpoint):
    """docs/chat.md's `transformers serve` example: its handler.py command, against this module's engine."""
    text = (ROOT / "docs" / "chat.md").read_text()
    block = re.search(r"<!-- commands: tests/test_chat_backend.py -->\n```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    [command] = [line for line in joined.splitlines() if "handler.py" in line]
    port = engine.split(":")[2].split("/")[0]
    command = (
        command.replace("127.0.0.1:8001", f"127.0.0.1:{port}")
        .replace("/tmp/tiny-chat", str(tiny_chat_model_dir))
        .replace("checkpoints/tiny", str(tiny_checkpoint))
        .replace(".venv/bin/python", shlex.quote(sys.executable))
    )
    env = {**os.environ, "FISH_WARMUP": "false"}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chat backend: remote OpenAI-compatible engine" in result.stderr
    assert '"text": ' in result.stdout and '"audio": ' in result.stdout


# --- what is sent, and the worker's choice of backend --------------------------------------------------------


@pytest.mark.timeout(60)
def test_history_system_prompt_and_sampling_go_as_messages_and_parameters(service, chat_settings):
    with StubEngine() as stub:
        backend = RemoteChatBackend(stub.base_url, api_key="secret-key", model="served-name", max_retries=0)
        store = MemoryConversationStore(ttl_s=60, max_conversations=10)
        store.append_turn("c", "Earlier question?", "Earlier answer.", voice=None)
        runner = JobRunner(
            service, chat_settings, ConversationService(service, store, chat=backend, settings=chat_settings)
        )
        [out] = run_job(
            runner,
            {
                "message": "Next <|im_end|> question?",
                "max_tokens": 33,
                "seed": 9,
                "temperature": 0.4,
                "conversation_id": "c",
                "system_prompt": "Answer in French.",
            },
        )
        backend.close()
    assert out["text"] == "".join(REPLY)
    [seen] = stub.requests
    assert seen.path == "/v1/chat/completions" and seen.headers["authorization"] == "Bearer secret-key"
    assert seen.body["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Earlier question?"},
        {"role": "assistant", "content": "Earlier answer."},
        {"role": "user", "content": "Next <|im_end|> question?"},  # the text as the user wrote it
    ]
    assert {k: seen.body[k] for k in ("model", "stream", "temperature", "max_tokens", "seed")} == {
        "model": "served-name",
        "stream": True,
        "temperature": 0.4,
        "max_tokens": 33,
        "seed": 9,
    }


@pytest.mark.timeout(60)
def test_the_worker_builds_the_remote_backend_and_says_so(service, settings, caplog):
    chat = ChatSettings(base_url="http://127.0.0.1:9/v1", model="m", frames_per_sentence=FRAMES)
    with caplog.at_level(logging.INFO, logger="fish_worker"):
        conversations = build_conversations(service, settings.model_copy(update={"chat": chat}))
    assert isinstance(conversations.chat, RemoteChatBackend) and isinstance(conversations.chat, ChatBackend)
    assert conversations.mode(None) == "chat"
    assert any(
        "chat backend: remote OpenAI-compatible engine at http://127.0.0.1:9/v1, model 'm'; no chat weights"
        in record.getMessage()
        for record in caplog.records
    )
    conversations.chat.close()
    assert make_chat_backend(ChatSettings()) is None


def test_the_local_model_is_a_chat_backend_too(tiny_chat_model_dir):
    local = make_chat_backend(ChatSettings(model_dir=tiny_chat_model_dir), device="cpu")
    assert isinstance(local, ChatModel) and isinstance(local, ChatBackend)
    assert local.description.startswith(f"local model {tiny_chat_model_dir} on cpu")


# --- an engine failing: bounded job errors naming the chat backend, no history written -----------------------


FAILURES = {
    "401": (
        "chat backend unavailable: {url} refused the API key (401: Incorrect API key provided); check FISH_CHAT_API_KEY"
    ),
    "429": "chat backend busy: {url} is rate limiting requests (429: Too many requests); try again later",
    "silent": "chat backend unavailable: {url} sent nothing for 0.5 s before the reply (FISH_CHAT_READ_TIMEOUT_S)",
    "stall": "chat backend unavailable: {url} sent nothing for 0.5 s mid-reply (FISH_CHAT_READ_TIMEOUT_S)",
    "break": "chat backend unavailable: the stream from {url} broke off mid-reply (RemoteProtocolError: ",
    "malformed": "chat backend unavailable: {url} sent a malformed stream chunk (JSONDecodeError: ",
    "bad_shape": (
        "chat backend unavailable: {url} sent a malformed stream chunk (ValidationError: "
        "choices.0.delta.content: Input should be a valid string)"
    ),
    "no_finish": (
        "chat backend unavailable: the stream from {url} ended before the reply did (no finish_reason): "
        "the engine stopped mid-reply"
    ),
    "error_event": "chat backend unavailable: {url} reported an error mid-reply (CUDA out of memory)",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("behaviour", FAILURES)
def test_an_engine_failure_is_a_job_error_naming_the_chat_backend(behaviour, service, chat_settings):
    store = MemoryConversationStore(ttl_s=60, max_conversations=10)
    store.append_turn("c", "Earlier question?", "Earlier answer.", voice=None)
    with StubEngine() as stub:
        stub.behaviour = behaviour
        backend = RemoteChatBackend(stub.base_url, model="m", read_timeout_s=0.5, max_retries=0)
        runner = JobRunner(
            service, chat_settings, ConversationService(service, store, chat=backend, settings=chat_settings)
        )
        started = time.monotonic()
        chunks = run_job(
            runner, {"message": HELLO, "max_tokens": 40, "seed": 1, "stream": True, "conversation_id": "c"}
        )
        elapsed = time.monotonic() - started
        backend.close()
    error = chunks[-1]["error"]
    assert error.startswith(FAILURES[behaviour].format(url=stub.base_url)), error
    assert len(error) <= 300 and elapsed < 20
    assert all("error" not in c for c in chunks[:-1])  # what came before the failure was the reply's start
    assert store.get("c").history() == [
        {"role": "user", "content": "Earlier question?"},
        {"role": "assistant", "content": "Earlier answer."},
    ]


@pytest.mark.timeout(60)
def test_an_unreachable_engine_is_a_job_error(service, chat_settings):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = RemoteChatBackend(url, model="m", max_retries=0)
    runner = JobRunner(
        service,
        chat_settings,
        ConversationService(
            service, MemoryConversationStore(ttl_s=60, max_conversations=10), chat=backend, settings=chat_settings
        ),
    )
    [out] = run_job(runner, {"message": HELLO, "conversation_id": "c"})
    backend.close()
    assert out["error"].startswith(f"chat backend unavailable: cannot reach {url} (ConnectError: "), out


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "behaviour, kind", [("401", ErrorKind.UNAVAILABLE), ("429", ErrorKind.BUSY), ("break", ErrorKind.UNAVAILABLE)]
)
def test_error_kinds(behaviour, kind):
    """429 is the engine's 'try again later' (BUSY: a door answers 429); the rest are UNAVAILABLE (500)."""
    with StubEngine() as stub:
        stub.behaviour = behaviour
        backend = RemoteChatBackend(stub.base_url, model="m", max_retries=0)
        with pytest.raises(ChatBackendError) as failure:
            list(backend.stream_reply([{"role": "user", "content": HELLO}]))
        backend.close()
    assert failure.value.kind is kind


# --- stopping ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stopping_a_turn_closes_the_http_stream_at_once(service, chat_settings):
    """The engine sends one delta, then nothing (its read timeout is far off): stopping the job wakes the
    waiting writer and hangs up on the engine now, not when the timeout would have."""
    with StubEngine() as stub:
        stub.behaviour = "stall"
        backend = RemoteChatBackend(stub.base_url, model="m", read_timeout_s=30, max_retries=0)
        conversations = ConversationService(
            service, MemoryConversationStore(ttl_s=60, max_conversations=10), chat=backend, settings=chat_settings
        )
        request = JobInput(message=HELLO, seed=1, mode="chat", conversation_id="c").to_turn("chat", FRAMES)
        stop_turn = threading.Event()
        events = []
        for event in conversations.turn(request, stop_turn):
            events.append(event)
            if isinstance(event, TextDelta):
                stopped_at = time.monotonic()
                stop_turn.set()
        ended = time.monotonic() - stopped_at
        assert stub.disconnected.wait(5), "the HTTP stream was not closed"
        hung_up = time.monotonic() - stopped_at
        backend.close()
    assert [e.text for e in events if isinstance(e, TextDelta)] == [REPLY[0]]
    assert ended < 2 and hung_up < 5, (ended, hung_up)
    assert conversations.store.get("c") is None  # a stopped turn is not stored


@pytest.mark.timeout(120)
def test_concurrent_replies_with_random_stops_all_end_and_leave_no_task(service):
    """Stress: 40 replies on 8 threads share one backend loop; each is read whole, stopped (close or
    abort from another thread) at a random point, or fails; every one ends, and no task is left."""
    rng = random.Random(18)
    with StubEngine() as stub:
        stub.behaviour = "slow"
        backend = RemoteChatBackend(stub.base_url, model="m", read_timeout_s=10, max_retries=0)
        outcomes: list[str] = []

        def one_reply(plan: str, after: int) -> None:
            reply = backend.stream_reply([{"role": "user", "content": HELLO}], seed=1)
            got = []
            if plan == "abort":
                threading.Timer(rng.random() * 0.05, reply.abort).start()
            for delta in reply:
                got.append(delta)
                if plan == "close" and len(got) == after:
                    reply.close()
                    break
            outcomes.append("whole" if "".join(got) == "".join(REPLY) else plan)

        plans = [(rng.choice(["whole", "close", "abort"]), rng.randint(1, 3)) for _ in range(40)]
        threads = [threading.Thread(target=lambda chunk=plans[i::8]: [one_reply(*p) for p in chunk]) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        time.sleep(0.2)  # cancelled tasks finish closing their streams
        left = asyncio.run_coroutine_threadsafe(_tasks_other_than_this(), backend._loop).result(timeout=5)
        backend.close()
    assert len(outcomes) == 40 and outcomes.count("whole") >= sum(p == "whole" for p, _ in plans)
    assert left == 0


async def _tasks_other_than_this() -> int:
    return len(asyncio.all_tasks() - {asyncio.current_task()})
