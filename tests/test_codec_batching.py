"""Concurrent codec decodes in padded batches (engine/codec_batching.py): same audio, every caller ends."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fish_worker.engine.codec import Codec
from fish_worker.engine.codec_batching import CodecDecodeInterrupted, DecodeBatcher, _Request
from fish_worker.tts.requests import SynthesisRequest
from fish_worker.tts.service import TTSService
from fish_worker.tts.voice_resolver import VoiceResolver


def random_codes(service, frames: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, 64, (service.generator.num_codebooks, frames), generator=torch.Generator().manual_seed(seed)
    )


def batched_service(service, batch_frames: int) -> TTSService:
    """The session's models and engine, with a codec that batches concurrent decodes."""
    codec = Codec(service.codec.model, service.codec.device, service.codec.precision, batch_frames)
    voices = service.voices
    return TTSService(
        service.generator,
        codec,
        VoiceResolver(codec, voices.num_codebooks, voices.store, voices.cache, voices.max_bytes, voices.max_seconds),
        service.limits,
    )


def test_padded_rows_decode_to_their_solo_audio(service):
    codes = [random_codes(service, n, seed=n) for n in (40, 7, 23, 1)]
    together = service.codec.decode_many(codes)
    for c, audio in zip(codes, together, strict=True):
        alone = service.codec.decode(c)
        assert audio.shape == alone.shape == (c.shape[1] * service.codec.samples_per_frame,)
        np.testing.assert_allclose(audio, alone, atol=1e-5)


def test_a_batch_of_sentences_and_streamed_windows_gives_each_its_solo_audio(service):
    """Streamed windows (latents after the codec transformer: engine/codec_stream.py) share the
    batcher's turns with whole sentences' codes; each row keeps the audio it has alone."""
    batched = batched_service(service, batch_frames=512).codec
    dim = service.codec.model.quantizer.post_module.config.dim
    latents = [torch.randn(dim, n, generator=torch.Generator().manual_seed(n)) for n in (24, 9)]
    inputs = [random_codes(service, 17, seed=1), latents[0], random_codes(service, 30, seed=2), latents[1]]
    together = batched._decode_on_stream(inputs)
    solo = [
        service.codec.decode(inputs[0]),
        service.codec.decode_window(latents[0]),
        service.codec.decode(inputs[2]),
        service.codec.decode_window(latents[1]),
    ]
    for got, alone in zip(together, solo, strict=True):
        assert got.shape == alone.shape
        np.testing.assert_allclose(got, alone, atol=1e-5)


def test_concurrent_jobs_share_decodes_and_keep_their_audio(service):
    """Streamed jobs at once through a batching codec: same audio as the plain codec, fewer decode calls."""
    batched = batched_service(service, batch_frames=512)
    requests = [
        SynthesisRequest(
            text=f"Sentence number {i}. And one more, {i}.", seed=40 + i, frames_per_sentence=24, stream=bool(i % 2)
        )
        for i in range(4)
    ]

    def audio(svc, request):
        return np.concatenate([c.audio for c in svc.synthesize(request)])

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda r: audio(batched, r), requests))
    for request, got in zip(requests, together, strict=True):
        np.testing.assert_allclose(got, audio(service, request), atol=1e-4)
    assert batched.codec.batcher.requests >= batched.codec.batcher.batches > 0


def fake_decode_many(codes):
    """Audio that names its codes (so a mixed-up row shows); a code of -1 poisons a row."""
    if any(bool((c < 0).any()) for c in codes):
        raise ValueError("poisoned row")
    return [np.full(c.shape[1], float(c[0, 0]), np.float32) for c in codes]


def test_requests_during_a_decode_form_the_next_batch():
    first_started, release = threading.Event(), threading.Event()
    sizes = []

    def decode_many(codes):
        sizes.append(len(codes))
        if len(sizes) == 1:
            first_started.set()
            assert release.wait(10)
        return fake_decode_many(codes)

    batcher = DecodeBatcher(decode_many, max_frames=100)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.decode, torch.full((2, 10), 1))]
        assert first_started.wait(10)
        futures += [pool.submit(batcher.decode, torch.full((2, 10 + i), 2 + i)) for i in range(3)]
        while len(batcher._pending) < 3:  # noqa: SLF001 (waits for the three to queue)
            threading.Event().wait(0.01)
        release.set()
        results = [f.result(timeout=10) for f in futures]
    assert sizes == [1, 3]
    assert [(len(r), r[0]) for r in results] == [(10, 1), (10, 2), (11, 3), (12, 4)]


def test_a_poisoned_request_fails_alone():
    batcher = DecodeBatcher(fake_decode_many, max_frames=1000)
    good, bad = torch.full((2, 5), 3), torch.full((2, 5), -1)
    # Driven as one batch (the path concurrent callers take): the batch fails, each row is retried alone.
    requests = [_Request(good), _Request(bad)]
    batcher._run(requests)  # noqa: SLF001
    assert requests[0].result is not None and requests[0].result[0] == 3
    assert isinstance(requests[1].error, ValueError)


def test_an_interrupted_decode_fails_its_batch_instead_of_hanging():
    class Interrupt(BaseException):
        pass

    def decode_many(codes):
        raise Interrupt

    batcher = DecodeBatcher(decode_many, max_frames=1000)
    requests = [_Request(torch.zeros(2, 3, dtype=torch.long)) for _ in range(3)]
    with pytest.raises(Interrupt):
        batcher._run(requests)  # noqa: SLF001
    assert all(isinstance(r.error, CodecDecodeInterrupted) for r in requests)


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_every_caller_gets_its_own_audio(seed):
    """Many threads, random lengths, delays, poisoned rows and batch caps: every call ends, with its own
    result or its own error, and no batch exceeds the cap unless one request alone does."""
    rng = random.Random(seed)
    cap = rng.choice([1, 16, 64, 400])
    seen_batches = []
    lock = threading.Lock()

    def decode_many(codes):
        with lock:
            seen_batches.append([c.shape[1] for c in codes])
        threading.Event().wait(rng.random() * 0.003)
        return fake_decode_many(codes)

    batcher = DecodeBatcher(decode_many, max_frames=cap)
    calls = [(i, rng.randint(1, 80), rng.random() < 0.15) for i in range(60)]

    def call(spec):
        i, frames, poisoned = spec
        threading.Event().wait(rng.random() * 0.005)
        codes = torch.full((2, frames), -1 if poisoned else i)
        try:
            audio = batcher.decode(codes)
        except ValueError:
            return "error"
        return (len(audio), float(audio[0]))

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(call, calls, timeout=60))
    for (i, frames, poisoned), outcome in zip(calls, outcomes, strict=True):
        assert outcome == ("error" if poisoned else (frames, float(i)))
    for lengths in seen_batches:
        assert len(lengths) == 1 or max(lengths) * len(lengths) <= cap
    assert batcher.requests >= len(calls)  # retried rows count again


def test_the_cpu_decodes_each_job_on_its_own_thread_by_default(service, settings):
    """Unset FISH_CODEC_BATCH_FRAMES: off on the CPU (a batch measured slower there than one by one)."""
    assert settings.codec_batch_frames is None
    assert service.codec.batcher is None
