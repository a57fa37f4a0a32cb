"""KV memory per job: pages for prompt + budget come from one pool; a job waits when it is spent."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from fish_worker.engine.batched_forward import PagedKVCache
from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.generation import PromptTooLongError, SemanticGenerator
from fish_worker.engine.sampling import SamplingParams

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def single(service):
    return SemanticGenerator(service.generator.model, service.generator.device)


def generate(scheduler, text: str, seed: int, budget: int, stop=None) -> torch.Tensor:
    out = list(
        scheduler.generate(text, [], SamplingParams(0.7, 0.8, 1.1, budget), torch.Generator().manual_seed(seed), stop)
    )
    return torch.stack(out, dim=1) if out else torch.zeros(0)


def run_all(fn, n: int) -> list:
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
        assert not t.is_alive(), "a job never ended"
    return results


def test_pool_bytes_follow_the_formula(single):
    model = single.model
    cache = PagedKVCache(model, slots=2, pages=5, dtype=torch.bfloat16, device=torch.device("cpu"))
    cfg = model.config
    per_token = 2 * cfg.n_layer * cfg.n_local_heads * cfg.head_dim * 2
    assert PagedKVCache.bytes_per_token(model, torch.bfloat16) == per_token
    assert cache.nbytes == (5 + 1) * cache.page_size * per_token  # + the shared zero page


def test_jobs_wait_for_pages_and_keep_their_tokens(single):
    prompt = single.prompt_length("Hello there.", [])
    per_job = -(-(prompt + 40) // 64)
    scheduler = BatchScheduler(single, max_batch=4, kv_tokens=2 * per_job * 64)  # room for two at a time
    expected = [generate(single, "Hello there.", seed, 40) for seed in range(4)]
    got = run_all(lambda i: generate(scheduler, "Hello there.", i, 40), 4)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert scheduler.caches.free_pages == scheduler.caches.pages
    assert sorted(scheduler._free_slots) == list(range(4))


def test_a_job_larger_than_the_pool_fails_naming_the_setting(single):
    scheduler = BatchScheduler(single, max_batch=2, kv_tokens=64)
    with pytest.raises(PromptTooLongError, match="FISH_KV_CACHE_TOKENS"):
        generate(scheduler, "Hello there.", 0, 500)
    assert len(generate(scheduler, "Hi.", 0, 64 - single.prompt_length("Hi.", []))) > 0  # the engine still serves


def test_random_schedules_end_every_job_and_return_every_page(single):
    rng = random.Random(13)
    scheduler = BatchScheduler(single, max_batch=3, kv_tokens=6 * 64)
    jobs = [
        (rng.choice(["Hi.", "Hello there.", "A longer sentence."]), rng.randint(1, 150), rng.random() < 0.3)
        for _ in range(10)
    ]

    def job(i: int):
        text, budget, cancel = jobs[i]
        stop = threading.Event()
        if cancel:
            threading.Timer(rng.random() * 0.5, stop.set).start()
        return generate(scheduler, text, i, budget, stop)

    results = run_all(job, len(jobs))
    for (text, budget, cancel), result in zip(jobs, results):
        need = single.prompt_length(text, []) + budget
        if need > 6 * 64:  # refused (or cancelled first, then it ends making nothing)
            assert isinstance(result, PromptTooLongError) or (cancel and result.numel() == 0), result
        else:
            assert isinstance(result, torch.Tensor), result
    assert scheduler.caches.free_pages == scheduler.caches.pages
    assert sorted(scheduler._free_slots) == list(range(3))
