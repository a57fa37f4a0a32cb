"""Randomized schedules against the real batch scheduler: every job must end, slots must all return,
and the tokens of every job that was not stopped must equal its solo run.

Each schedule starts a few jobs on threads with random delays; each job ends one way: naturally,
stopped by its caller's event, abandoned by its consumer (generator closed), poisoned (every step
holding its row raises: only it may fail) or poisoned at join (its prefill raises). Some schedules
also inject one transient step failure that no job may notice.

    python -m fish_worker.devtools.engine_stress CHECKPOINT_DIR [--schedules 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.generation import SemanticGenerator
from fish_worker.engine.sampling import SamplingParams

TEXTS = ["Hello there.", "A longer sentence, with more words in it.", "Short!", "Numbers 1 2 3."]
SEEDS = [0, 1, 2]
MAX_BUDGET = 14
ENDINGS = ["natural", "natural", "stop", "close", "poison", "poison_join"]
JOB_TIMEOUT_S = 60.0


class InjectedFault(RuntimeError):
    pass


class FaultInjector:
    """Wraps the scheduler's batched step and prefill copy to raise where a schedule says."""

    def __init__(self, scheduler: BatchScheduler):
        self.step_fn = scheduler.step_fn
        self.load_prefill = scheduler.caches.load_prefill
        self.poisoned: set[int] = set()  # id() of generators whose rows make a step raise
        self.poisoned_at_join: set[int] = set()
        self.transient_at: int | None = None  # raise once, at this step call
        self.calls = 0
        self.joining: torch.Generator | None = None
        # Fault injection: this instance's step and prefill copy are replaced by the wrappers below.
        scheduler.step_fn = self.step  # type: ignore[assignment]
        scheduler.caches.load_prefill = self.prefill  # type: ignore[method-assign]

    def reset(self) -> None:
        self.poisoned.clear()
        self.poisoned_at_join.clear()
        self.transient_at, self.calls = None, 0

    def step(self, tokens, positions, slots, sampling, windows):
        self.calls += 1
        if self.calls == self.transient_at:
            raise InjectedFault("transient step failure")
        if any(id(g) in self.poisoned for g in sampling.generators):
            raise InjectedFault("poisoned row")
        return self.step_fn(tokens, positions, slots, sampling, windows)

    def prefill(self, model, slot, length):
        if self.joining is not None and id(self.joining) in self.poisoned_at_join:
            raise InjectedFault("poisoned prefill")
        return self.load_prefill(model, slot, length)


@dataclass
class Job:
    text: str
    seed: int
    budget: int
    ending: str
    after: int  # frames consumed before stopping or closing
    delay_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    frames: list = field(default_factory=list)
    error: BaseException | None = None
    ended: bool = False


class StressRun:
    def __init__(self, single: SemanticGenerator, max_batch: int = 3):
        self.single = single
        self.scheduler = BatchScheduler(single, max_batch=max_batch)
        self.faults = FaultInjector(self.scheduler)
        self._patch_join()
        self.solo: dict[tuple[str, int], torch.Tensor] = {}
        self.schedules = 0
        self.failures: list[str] = []

    def _patch_join(self) -> None:
        # The prefill fault needs to know whose prefill it is: note the joining sequence's generator.
        join = self.scheduler._join

        def noting_join(seq):
            self.faults.joining = seq.generator
            try:
                return join(seq)
            finally:
                self.faults.joining = None

        self.scheduler._join = noting_join  # type: ignore[method-assign]  # wrapped on this instance, see above

    def solo_frames(self, text: str, seed: int) -> torch.Tensor:
        if (text, seed) not in self.solo:
            params = SamplingParams(max_new_tokens=MAX_BUDGET)
            out = list(self.single.generate(text, [], params, torch.Generator().manual_seed(seed)))
            self.solo[(text, seed)] = (
                torch.stack(out) if out else torch.zeros((0, self.single.num_codebooks), dtype=torch.int)
            )
        return self.solo[(text, seed)]

    def random_jobs(self, rng: random.Random) -> list[Job]:
        return [
            Job(
                rng.choice(TEXTS),
                rng.choice(SEEDS),
                rng.randint(1, MAX_BUDGET),
                rng.choice(ENDINGS),
                rng.randint(0, 6),
                rng.uniform(0, 0.01),
            )
            for _ in range(rng.randint(1, 6))
        ]

    def run_schedule(self, rng: random.Random) -> list[str]:
        jobs = self.random_jobs(rng)
        self.faults.reset()
        if rng.random() < 0.3:
            self.faults.transient_at = rng.randint(1, 10)
        generators = [torch.Generator().manual_seed(job.seed) for job in jobs]
        for job, gen in zip(jobs, generators):
            if job.ending == "poison":
                self.faults.poisoned.add(id(gen))
            elif job.ending == "poison_join":
                self.faults.poisoned_at_join.add(id(gen))
        threads = [
            threading.Thread(target=self._consume, args=(job, gen), daemon=True) for job, gen in zip(jobs, generators)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        problems = [f"job {i} ({job.ending}) never ended" for i, job in enumerate(jobs) if not job.ended]
        problems += self._check_engine_idle()
        if not problems:
            problems += [f"job {i}: {p}" for i, job in enumerate(jobs) if (p := self._check_job(job))]
        self.schedules += 1
        return problems

    def _consume(self, job: Job, gen: torch.Generator) -> None:
        time.sleep(job.delay_s)
        params = SamplingParams(max_new_tokens=job.budget)
        frames = self.scheduler.generate(job.text, [], params, gen, job.stop)
        try:
            for frame in frames:
                job.frames.append(frame)
                if job.ending in ("stop", "close") and len(job.frames) > job.after:
                    if job.ending == "stop":
                        job.stop.set()
                    else:
                        frames.close()
                        break
        except BaseException as exc:  # noqa: BLE001 - recorded and judged by _check_job
            job.error = exc
        finally:
            job.ended = True

    def _check_engine_idle(self) -> list[str]:
        deadline = time.monotonic() + 5.0
        s = self.scheduler
        while time.monotonic() < deadline:
            if s.free_slots == s.max_batch and not s._active and not s._waiting:
                return []
            time.sleep(0.01)
        return [
            f"engine not idle: free slots {s.free_slots}/{s.max_batch}, "
            f"{len(s._active)} active, {len(s._waiting)} waiting"
        ]

    def _check_job(self, job: Job) -> str | None:
        if job.ending == "poison_join" or (job.ending == "poison" and job.error is not None):
            return None if isinstance(job.error, InjectedFault) else f"poisoned job ended with {job.error!r}"
        # A poisoned job that ended at its prefill (<|im_end|> or a budget of 1) never reached a step.
        if job.ending == "poison" and len(job.frames) > 1:
            return "poisoned job outlived its first step"
        if job.error is not None:
            return f"failed: {job.error!r}"
        solo = self.solo_frames(job.text, job.seed)[: job.budget]
        got = torch.stack(job.frames) if job.frames else solo[:0]
        if job.ending == "natural":
            return (
                None
                if torch.equal(got, solo)
                else f"tokens differ from the solo run ({len(got)} vs {len(solo)} frames)"
            )
        # Stopped or closed: a prefix of the solo run (the engine may run a frame ahead of the consumer).
        return None if torch.equal(got, solo[: len(got)]) else "stopped job's tokens are not a prefix of its solo run"


def run(single: SemanticGenerator, schedules: int, seed: int = 0, max_batch: int = 3) -> StressRun:
    stress = StressRun(single, max_batch)
    rng = random.Random(seed)
    for number in range(schedules):
        for problem in stress.run_schedule(rng):
            stress.failures.append(f"schedule {number}: {problem}")
    return stress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # injected faults are logged as errors: expected here
    from fish_worker.engine.checkpoint import load_models

    models = load_models(args.checkpoint_dir, torch.device("cpu"), torch.float32)
    started = time.perf_counter()
    stress = run(
        SemanticGenerator(models.text2semantic, torch.device("cpu")), args.schedules, args.seed, args.max_batch
    )
    for failure in stress.failures:
        print(failure)
    print(
        f"schedules run: {stress.schedules}, failures: {len(stress.failures)}, "
        f"steps: {stress.scheduler.steps}, step failures injected and survived: {stress.scheduler.step_failures}, "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 1 if stress.failures else 0


if __name__ == "__main__":
    sys.exit(main())
