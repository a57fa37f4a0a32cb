"""Start-up of the speech layer: load the models once (device, precision), plan the KV pool and how
many requests run at once, build the TTSService and its VoiceResolver from the settings, warm it up.

    tts = load_tts(settings)          # the models, on the settings' device
    warm_up(tts)                      # optional: the first real request then pays no first-call costs
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from fish_worker.engine import kv_budget
from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.checkpoint import load_models
from fish_worker.engine.codec import Codec
from fish_worker.engine.generation import SemanticGenerator
from fish_worker.settings import Settings
from fish_worker.tts.requests import SynthesisRequest
from fish_worker.tts.service import SpeechLimits, TTSService
from fish_worker.tts.voice_cache import VoiceCodesCache
from fish_worker.tts.voice_resolver import VoiceResolver
from fish_worker.tts.voices import VoiceStore

log = logging.getLogger(__name__)
# FISH_CODEC_BATCH_FRAMES when unset on a GPU: a batch of concurrent decodes holds at most half the
# frames one long sentence's decode may (max_tokens_limit, 2048), so batching adds no memory peak.
GPU_CODEC_BATCH_FRAMES = 1024


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


@dataclass(frozen=True)
class SpeechModels:
    """The loaded engine: the batched generator, the codec, and the memory plan they were sized by."""

    generator: BatchScheduler
    codec: Codec
    memory_plan: kv_budget.KVBudget  # KV pool size and concurrency


def load_speech_models(settings: Settings, reserved_bytes: int = 0) -> SpeechModels:
    """`reserved_bytes`: GPU memory the pool leaves to others loaded before it (the chat model's KV)."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    models = load_models(settings.checkpoint_dir, device, precision)
    budget = kv_budget.plan(
        models.text2semantic,
        precision,
        device,
        settings.max_concurrency,
        settings.kv_cache_tokens,
        reserved_bytes=reserved_bytes,
    )
    log.info(
        "KV cache: %d tokens (%.2f GB), up to %d concurrent jobs%s",
        budget.kv_tokens,
        budget.pool_bytes / 1e9,
        budget.max_concurrency,
        f"; {reserved_bytes / 1e9:.2f} GB left for the chat model's KV" if reserved_bytes else "",
    )
    # Concurrent requests share decoding steps (one engine thread) instead of queueing on a lock.
    generator = BatchScheduler(
        SemanticGenerator(models.text2semantic, device),
        budget.max_concurrency,
        compile=settings.compile,
        kv_tokens=budget.kv_tokens,
    )
    batch_frames = settings.codec_batch_frames
    if batch_frames is None:
        batch_frames = GPU_CODEC_BATCH_FRAMES if device.type == "cuda" else 0
    codec = Codec(models.codec, device, precision, batch_frames)
    log.info(
        "models loaded from %s on %s/%s in %.1f s",
        settings.checkpoint_dir,
        device,
        precision,
        time.perf_counter() - started,
    )
    return SpeechModels(generator, codec, budget)


def build_tts(generator: BatchScheduler, codec: Codec, settings: Settings) -> TTSService:
    """The TTSService over loaded models: its voices (store, codes cache, clip limits) and limits from `settings`."""
    voices = VoiceResolver(
        codec,
        generator.num_codebooks,
        VoiceStore(settings.storage.voices_dir, settings.storage.max_voices),
        VoiceCodesCache(settings.reference_cache_size),
        settings.reference_max_bytes,
        settings.reference_max_seconds,
    )
    return TTSService(generator, codec, voices, SpeechLimits.of(settings))


def load_tts(settings: Settings, reserved_bytes: int = 0) -> TTSService:
    """The models loaded and the service built around them (see `load_speech_models`)."""
    models = load_speech_models(settings, reserved_bytes)
    return build_tts(models.generator, models.codec, settings)


def warm_up(tts: TTSService) -> None:
    """One short synthesis, so the first request pays no first-call costs (allocations, kernels)."""
    started = time.perf_counter()
    for _ in tts.synthesize(SynthesisRequest(text="Warm up.", frames_per_sentence=8, seed=0)):
        pass
    log.info("warm-up synthesis took %.2f s", time.perf_counter() - started)
