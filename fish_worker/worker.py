"""Process start-up: load the models once, then hand jobs to runpod's worker loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from fish_worker.asr.make_backend import make_transcriber
from fish_worker.asr.transcriber import Transcriber
from fish_worker.asr.backend import ASR_SAMPLE_RATE
from fish_worker.asr.whisper import WhisperModelError, WhisperRecognizer
from fish_worker.dialogue.make_backend import make_chat_backend
from fish_worker.dialogue.llm import ChatModel, ChatModelError
from fish_worker.dialogue.turns import ConversationService
from fish_worker.conversations import ConversationStoreError, make_conversation_store
from fish_worker.engine.checkpoint import REQUIRED_FILES, CheckpointError, check_checkpoint_dir
from fish_worker.jobs.runner import JobRunner
from fish_worker.tts.loader import load_tts, resolve_device, warm_up
from fish_worker.tts.service import TTSService
from fish_worker.settings import Settings, configure_logging

# runpod logs every output chunk (audio included) at its default DEBUG level.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

log = logging.getLogger("fish_worker")


def ensure_checkpoint(settings: Settings) -> None:
    """On a first start with an empty network volume, fetch the weights (needs HF_TOKEN: the repo is gated)."""
    try:
        check_checkpoint_dir(settings.checkpoint_dir)
        return
    except CheckpointError:
        if not (settings.download_missing and os.environ.get("HF_TOKEN")):
            raise
    from fish_worker.engine.download import TTS_REPO, DownloadError, download

    log.info("checkpoint incomplete at %s: downloading %s", settings.checkpoint_dir, TTS_REPO)
    try:
        download(TTS_REPO, settings.checkpoint_dir, sorted(REQUIRED_FILES), timeout_s=30)
    except DownloadError as exc:
        raise CheckpointError(str(exc)) from None


def build_runner(settings: Settings) -> JobRunner:
    ensure_checkpoint(settings)
    # The chat model first: the speech KV pool is planned from the GPU memory left after its weights,
    # less the KV its replies hold at full batch (docs/performance.md, "Chat").
    chat = load_chat_backend(settings)
    reserved = chat.kv_bytes() if isinstance(chat, ChatModel) else 0
    transcriber = load_transcriber(settings)  # its weights, too, are loaded before the KV pool is planned
    service = load_tts(settings, reserved_bytes=reserved)
    if settings.warmup:
        warm_up(service)
    return JobRunner(service, settings, build_conversations(service, settings, chat=chat), transcriber=transcriber)


def load_transcriber(settings: Settings) -> Transcriber | None:
    """Speech in: a local Whisper in FISH_ASR_MODEL_DIR (loaded here), the remote server at
    FISH_ASR_BASE_URL, or None."""
    started = time.perf_counter()
    transcriber = make_transcriber(settings, device=resolve_device(settings.device))
    if transcriber is None:
        log.info("speech in: off (no FISH_ASR_MODEL_DIR or FISH_ASR_BASE_URL)")
    else:
        if settings.warmup and isinstance(transcriber.recognizer, WhisperRecognizer):
            transcriber.transcribe_samples(warmup_clip(), language="en")  # the first voice message is not the slow one
        log.info("speech in: %s (ready in %.1f s)", transcriber.description, time.perf_counter() - started)
    return transcriber


def warmup_clip() -> np.ndarray:
    """One second of a warbling tone at the recognizer's rate: something for Whisper to run on."""
    t = np.arange(ASR_SAMPLE_RATE, dtype=np.float32) / ASR_SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5).astype(np.float32)


def load_chat_backend(settings: Settings):
    """The chat backend: a local model in FISH_CHAT_MODEL_DIR (loaded here), the remote engine at
    FISH_CHAT_BASE_URL, or None."""
    started = time.perf_counter()
    chat = make_chat_backend(settings.chat, device=resolve_device(settings.device))
    if chat is not None:
        log.info("chat backend: %s (ready in %.1f s)", chat.description, time.perf_counter() - started)
    return chat


_UNSET = object()


def build_conversations(service: TTSService, settings: Settings, chat=_UNSET) -> ConversationService:
    """The chat backend (loaded here unless given) and the conversation store."""
    if chat is _UNSET:
        chat = load_chat_backend(settings)
    if isinstance(chat, ChatModel) and settings.warmup:
        chat.reply([{"role": "user", "content": "Hello."}], max_new_tokens=4, seed=0)
    storage = settings.storage
    store = make_conversation_store(storage.redis_url, storage.conversation_ttl_s, storage.max_conversations)
    try:
        store.ping()
    except ConversationStoreError as exc:
        # Not fatal: jobs without a conversation_id still work, and those with one fail clearly.
        log.error("%s; jobs with a conversation_id fail until it is reachable", exc)
    log.info(
        "conversations: %s store, chat mode %s",
        "Redis" if storage.redis_url else "in-process",
        "on" if chat else "off (no FISH_CHAT_MODEL_DIR or FISH_CHAT_BASE_URL)",
    )
    return ConversationService(service, store, chat=chat, settings=settings)


def _local_test_job(argv: list[str]) -> dict[str, Any] | None:
    """The job runpod would run locally: --test_input JSON, else ./test_input.json (None: not local)."""
    if "--rp_serve_api" in argv or os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        return None
    if "--test_input" in argv:
        index = argv.index("--test_input")
        return json.loads(argv[index + 1])
    path = Path("test_input.json")
    return json.loads(path.read_text()) if path.is_file() else None


def queue_job_handler(runner: JobRunner):
    """The per-job adapter between our JobRunner and runpod's worker loop (fish_worker/jobs/runpod_adapter.py)."""
    from fish_worker.jobs.runpod_adapter import QueueJobHandler

    return QueueJobHandler(whole=runner.result, stream=runner.stream)


async def run_local_job(
    runner: JobRunner, job: dict[str, Any], on_stream: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """What the platform would store for this job, through the same per-job code as the worker loop.

    runpod's own `--test_input` mode does not iterate generators; ours is the queue's path exactly.
    `on_stream` sees each stream chunk's body as it is posted.
    """
    from fish_worker.jobs.runpod_adapter import run_local

    return await run_local(queue_job_handler(runner), job, on_stream)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings()  # the one read of the environment; passed down from here
    configure_logging(settings.log_level)
    local_job = _local_test_job(argv)
    try:
        runner = build_runner(settings)
    except (CheckpointError, ChatModelError, WhisperModelError, ConversationStoreError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)

    if local_job is not None:
        result = asyncio.run(run_local_job(runner, local_job))
        print(json.dumps(result))
        sys.exit(1 if "error" in result else 0)

    import runpod

    from fish_worker.jobs.runpod_adapter import install

    # Each job is reported per its own `stream` flag (one result object, or chunks and a summary).
    handler = queue_job_handler(runner)
    install(handler)
    # Several jobs at once: the handler is async and their decoding steps are batched (engine/batching.py).
    # The plain `handler.result` (the whole result) is what the SDK's own modes (--rp_serve_api) call.
    runpod.serverless.start(
        {"handler": handler.result, "concurrency_modifier": lambda current: runner.service.max_concurrency}
    )
