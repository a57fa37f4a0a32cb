"""Batched decoding: a request's tokens are the same alone, in a batch, and as fish-speech makes them."""

from __future__ import annotations

import threading

import pytest
import torch

from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.generation import SemanticGenerator
from fish_worker.engine.sampling import SamplingParams

TEXTS = ["Hello there.", "A longer sentence, with more words in it.", "Short!", "Numbers 1 2 3."]


@pytest.fixture(scope="module")
def engines(service):
    """The reference batch-1 loop (fish-speech's computation) and a scheduler with 4 slots, one model."""
    single = SemanticGenerator(service.generator.model, service.generator.device)
    return single, BatchScheduler(single, max_batch=4)


def frames(generate, text: str, seed: int, max_tokens: int = 30, temperature=0.7, top_p=0.8, penalty=1.1):
    settings = SamplingParams(temperature, top_p, penalty, max_tokens)
    out = list(generate(text, [], settings, torch.Generator().manual_seed(seed)))
    return torch.stack(out, dim=1) if out else torch.zeros(0)


def run_together(scheduler, jobs: list[tuple]) -> list[torch.Tensor]:
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        results[i] = frames(scheduler.generate, *jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_alone_equals_the_reference_loop(engines):
    single, scheduler = engines
    for seed, text in enumerate(TEXTS):
        assert torch.equal(frames(scheduler.generate, text, seed), frames(single.generate, text, seed))


def test_batched_equals_alone(engines):
    single, scheduler = engines
    # Different lengths, budgets and sampling settings: rows join and leave at different steps.
    jobs = [(TEXTS[0], 1, 30), (TEXTS[1], 2, 12), (TEXTS[2], 3, 40, 0.9, 0.95, 1.3), (TEXTS[3], 4, 25)]
    expected = [frames(single.generate, *job) for job in jobs]
    rows_before = scheduler.rows_decoded
    steps_before = scheduler.steps
    together = run_together(scheduler, jobs)
    for got, want in zip(together, expected):
        assert torch.equal(got, want)
    assert scheduler.rows_decoded - rows_before > scheduler.steps - steps_before  # some steps were shared


def test_more_jobs_than_slots_wait_and_still_match(engines):
    single, scheduler = engines
    jobs = [(TEXTS[i % 4], 10 + i, 8 + i) for i in range(6)]
    expected = [frames(single.generate, *job) for job in jobs]
    for got, want in zip(run_together(scheduler, jobs), expected):
        assert torch.equal(got, want)


def test_stopping_one_job_leaves_the_others_intact(engines):
    single, scheduler = engines
    stop = threading.Event()
    expected = frames(single.generate, TEXTS[1], 5, 30)
    settings = SamplingParams(0.7, 0.8, 1.1, 30)
    stopped = scheduler.generate(
        TEXTS[0], [], SamplingParams(0.7, 0.8, 1.1, 2000), torch.Generator().manual_seed(6), stop
    )
    next(stopped)
    other = scheduler.generate(TEXTS[1], [], settings, torch.Generator().manual_seed(5))
    first = next(other)
    stop.set()
    assert len(list(stopped)) < 2000  # it ended before its budget (the engine may have run some frames ahead)
    assert torch.equal(torch.stack([first, *other], dim=1), expected)
    assert sorted(scheduler._free_slots) == list(range(scheduler.max_batch))


def test_a_job_stopped_before_it_joins_makes_nothing(engines):
    _, scheduler = engines
    stop = threading.Event()
    stop.set()
    assert list(scheduler.generate(TEXTS[0], [], SamplingParams(), torch.Generator().manual_seed(0), stop)) == []


def test_finishing_leaves_the_callers_stop_event_alone(engines):
    _, scheduler = engines
    stop = threading.Event()  # a job's: shared by all its sentences
    list(scheduler.generate(TEXTS[0], [], SamplingParams(max_new_tokens=5), torch.Generator().manual_seed(0), stop))
    assert not stop.is_set()


def test_compiled_step_gives_the_same_tokens(engines):
    """FISH_COMPILE wiring: on CPU the step is traced with "aot_eager", which must not change a bit."""
    single, _ = engines
    compiled = BatchScheduler(single, max_batch=2, compile=True)
    jobs = [(TEXTS[0], 5, 10), (TEXTS[1], 6, 8)]
    expected = [frames(single.generate, *job) for job in jobs]
    for got, want in zip(run_together(compiled, jobs), expected):
        assert torch.equal(got, want)


class _EngineBug(BaseException):
    """Not an Exception: escapes the step's fault isolation, as a bug in the engine loop would."""


def test_a_dying_engine_ends_every_consumer_and_the_next_job_starts_a_new_one(engines):
    from fish_worker.engine.batching import EngineStoppedError

    single, _ = engines
    scheduler = BatchScheduler(single, max_batch=2)
    real_step = scheduler.step_fn

    def broken_step(*args):
        raise _EngineBug("boom")

    scheduler.step_fn = broken_step
    jobs = [
        scheduler.generate(text, [], SamplingParams(max_new_tokens=20), torch.Generator().manual_seed(i))
        for i, text in enumerate(TEXTS[:3])
    ]  # 3 jobs, 2 slots: one is still waiting when it dies
    for job in jobs:
        with pytest.raises(EngineStoppedError):
            list(job)
    scheduler.step_fn = real_step
    assert torch.equal(frames(scheduler.generate, TEXTS[0], 3, 10), frames(single.generate, TEXTS[0], 3, 10))


def test_out_of_memory_in_a_shared_step_fails_no_one(engines):
    single, _ = engines
    scheduler = BatchScheduler(single, max_batch=4)
    real_step = scheduler.step_fn
    calls = []

    def oom_once(*args):
        calls.append(len(args[0]))
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_step(*args)

    scheduler.step_fn = oom_once
    jobs = [(TEXTS[i], 20 + i, 15) for i in range(4)]
    expected = [frames(single.generate, *job) for job in jobs]
    for got, want in zip(run_together(scheduler, jobs), expected):
        assert torch.equal(got, want)
    assert scheduler.step_failures == 1 and scheduler.free_slots == 4


def test_a_row_that_keeps_failing_fails_alone(engines):
    single, _ = engines
    scheduler = BatchScheduler(single, max_batch=4)
    real_step = scheduler.step_fn
    poisoned = torch.Generator().manual_seed(99)

    def poison(tokens, positions, slots, sampling, windows):
        if any(g is poisoned for g in sampling.generators):
            raise RuntimeError("this row cannot proceed")
        return real_step(tokens, positions, slots, sampling, windows)

    scheduler.step_fn = poison
    bad = scheduler.generate(TEXTS[1], [], SamplingParams(max_new_tokens=30), poisoned)
    next(bad)  # joined: its prefill frame
    good = run_together(scheduler, [(TEXTS[0], 7, 12), (TEXTS[2], 8, 12)])
    with pytest.raises(RuntimeError, match="cannot proceed"):
        list(bad)
    assert torch.equal(good[0], frames(single.generate, TEXTS[0], 7, 12))
    assert torch.equal(good[1], frames(single.generate, TEXTS[2], 8, 12))
    assert scheduler.free_slots == 4


def test_a_short_prefill_gives_the_model_its_own_caches_and_context_back(service):
    from fish_worker.engine.generation import short_prefill_cache

    model = service.generator.model
    context, caches = model.max_seq_len, [layer.attention.kv_cache for layer in model.layers]
    with service.generator.single.lock, short_prefill_cache(model, 64):
        assert model.max_seq_len == 64  # the prefill's mask spans the short cache only
        assert all(layer.attention.kv_cache.k_cache.shape[2] == 64 for layer in model.layers)
    # fish-speech's own loop (the reference) reads both afterwards: they must be the model's again.
    assert model.max_seq_len == context
    assert all(layer.attention.kv_cache is cache for layer, cache in zip(model.layers, caches))
