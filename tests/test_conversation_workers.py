"""A conversation shared across worker processes through a real redis-server: turn 1 runs in a worker
started as on RunPod (handler.py, settings from the environment, REDIS_URL), turn 2 in another worker
process (this one). The second sees the first's history and speaks in the voice tokens it stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fish_worker.dialogue.llm import ChatModel
from fish_worker.conversations import RedisConversationStore
from fish_worker.jobs.runner import JobRunner
from fish_worker.settings import ChatSettings
from fish_worker.worker import build_conversations
from helpers import FRAMES, expected_audio, expected_reply, reference_prompt, run_job, wav_b64

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def redis_url(redis_server):
    return redis_server


def worker_env(settings, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FISH_CHECKPOINT_DIR": str(settings.checkpoint_dir),
        "FISH_CHAT_MODEL_DIR": str(settings.chat.model_dir),
        "FISH_DEVICE": "cpu",
        "FISH_WARMUP": "false",
        "FISH_CHAT_FRAMES_PER_SENTENCE": str(FRAMES),
        "REDIS_URL": redis_url,
        "FISH_REFERENCE_MAX_SECONDS": "5",
    }


def test_turn_two_on_another_worker_continues_turn_one(service, tiny_chat_model_dir, settings, redis_url):
    chat_settings = settings.model_copy(
        update={
            "chat": ChatSettings(model_dir=tiny_chat_model_dir, frames_per_sentence=FRAMES),
            "storage": settings.storage.model_copy(update={"redis_url": redis_url}),
        }
    )
    reference = wav_b64(seconds=1.0, sample_rate=16000)
    turn_one = {
        "input": {
            "message": "What's the weather?",
            "conversation_id": "shared-1",
            "max_tokens": 20,
            "seed": 1,
            "reference_audio": reference,
            "reference_text": "My own voice.",
        }
    }
    worker_a = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(turn_one)],
        cwd=ROOT,
        env=worker_env(chat_settings, redis_url),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert worker_a.returncode == 0, worker_a.stderr[-3000:]
    one = json.loads(worker_a.stdout.strip().splitlines()[-1])["output"]

    # Worker B: its own models and its own connection to the same Redis, built the way worker.py builds it.
    worker_b = JobRunner(service, chat_settings, build_conversations(service, chat_settings))
    [two] = run_job(
        worker_b, {"message": "And what about tomorrow?", "conversation_id": "shared-1", "max_tokens": 20, "seed": 2}
    )

    chat = ChatModel.load(tiny_chat_model_dir, device="cpu")
    history = [{"role": "user", "content": "What's the weather?"}, {"role": "assistant", "content": one["text"]}]
    reply = expected_reply(
        chat, chat_settings, history + [{"role": "user", "content": "And what about tomorrow?"}], seed=2, max_tokens=20
    )
    assert two["text"] == reply  # B's model saw A's turn
    voice = reference_prompt(service, reference, "My own voice.")
    assert two["audio"] == expected_audio(service, reply, seed=2, voice=voice)  # and B spoke in A's stored voice

    stored = RedisConversationStore(redis_url, ttl_s=60).get("shared-1")
    assert [m["content"] for m in stored.history()] == [
        "What's the weather?",
        one["text"],
        "And what about tomorrow?",
        reply,
    ]
    assert stored.voice.source == "reference" and np.array_equal(stored.voice.codes, voice.codes.numpy())
