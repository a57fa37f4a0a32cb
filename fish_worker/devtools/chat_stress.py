"""Randomized schedules against the local chat model's batcher: every reply must end, every row must come
back, no thread may be left behind, and every reply that was not stopped must equal its solo reply.

Each schedule starts a few replies on threads with random delays, temperatures, seeds and budgets; each
ends one way: naturally, closed by its consumer after a few deltas, aborted from another thread,
poisoned (every step holding its row raises: only it may fail) or poisoned at join (its prefill
raises). Some schedules also inject one transient step failure that no reply may notice.

    python -m fish_worker.devtools.chat_stress [CHAT_MODEL_DIR] [--schedules 1000] [--seed 0] [--max-batch 3]

Without a directory it writes the tiny random chat model to a temporary one.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fish_worker.dialogue.backend import ChatBackendError
from fish_worker.dialogue.llm import ChatModel

MESSAGES = ["Hello, how are you?", "What's the weather like today?", "Tell me a story.", "Short!"]
TEMPERATURES = [0.0, 0.7, 1.0]
SEEDS = [0, 1, 2]
MAX_BUDGET = 16
ENDINGS = ["natural", "natural", "close", "abort", "poison", "poison_join"]
JOB_TIMEOUT_S = 60.0


class InjectedFault(RuntimeError):
    pass


class FaultInjector:
    """Wraps the decoder's step and prefill to raise where a schedule says."""

    def __init__(self, chat: ChatModel):
        decoder = chat.batcher.decoder
        self._step, self._prefill = decoder.step, decoder.prefill
        decoder.step, decoder.prefill = self.step, self.prefill  # type: ignore[method-assign]  # fault injection
        self.poisoned_prompts: set[tuple[int, ...]] = set()  # their rows make every step raise
        self.poisoned_at_join: set[tuple[int, ...]] = set()
        self.poisoned_rows: list = []  # the caches of poisoned prompts' rows
        self.transient_at: int | None = None  # raise once, at this step call
        self.calls = 0

    def reset(self) -> None:
        self.poisoned_prompts.clear()
        self.poisoned_at_join.clear()
        self.poisoned_rows.clear()
        self.transient_at, self.calls = None, 0

    def prefill(self, token_ids, capacity):
        if tuple(token_ids) in self.poisoned_at_join:
            raise InjectedFault("poisoned prefill")
        logits, cache = self._prefill(token_ids, capacity)
        if tuple(token_ids) in self.poisoned_prompts:
            self.poisoned_rows.append(cache)
        return logits, cache

    def step(self, tokens, rows):
        self.calls += 1
        if self.calls == self.transient_at:
            raise InjectedFault("transient step failure")
        if any(row is poisoned for row in rows for poisoned in self.poisoned_rows):
            raise InjectedFault("poisoned row")
        return self._step(tokens, rows)


@dataclass
class Job:
    message: str
    temperature: float
    seed: int
    budget: int
    ending: str
    after: int  # deltas consumed before closing or aborting
    delay_s: float
    deltas: list[str] = field(default_factory=list)
    error: BaseException | None = None
    ended: bool = False

    @property
    def options(self) -> dict:
        return {"temperature": self.temperature, "max_new_tokens": self.budget, "seed": self.seed}


class StressRun:
    def __init__(self, chat: ChatModel):
        self.chat = chat
        self.faults = FaultInjector(chat)
        self.solo: dict[tuple, str] = {}
        self.schedules = 0
        self.failures: list[str] = []

    def solo_reply(self, job: Job) -> str:
        """The job's reply alone (faults off): the reference a batched reply must equal."""
        key = (job.message, job.temperature, job.seed, job.budget)
        if key not in self.solo:
            self.solo[key] = self.chat.reply([{"role": "user", "content": job.message}], **job.options)
        return self.solo[key]

    def random_jobs(self, rng: random.Random, number: int) -> list[Job]:
        jobs = []
        for index in range(rng.randint(1, 6)):
            ending = rng.choice(ENDINGS)
            # Poisoned prompts are told apart by their text: give each its own.
            message = rng.choice(MESSAGES) + (f" #{number}.{index}" if ending.startswith("poison") else "")
            jobs.append(
                Job(
                    message,
                    rng.choice(TEMPERATURES),
                    rng.choice(SEEDS),
                    rng.randint(1, MAX_BUDGET),
                    ending,
                    rng.randint(0, 4),
                    rng.uniform(0, 0.02),
                )
            )
        return jobs

    def run_schedule(self, rng: random.Random) -> list[str]:
        jobs = self.random_jobs(rng, self.schedules)
        for job in jobs:  # references first, outside the schedule (and its faults)
            if not job.ending.startswith("poison"):
                self.solo_reply(job)
        self.faults.reset()
        if rng.random() < 0.3:
            self.faults.transient_at = rng.randint(1, 10)
        for job in jobs:
            if job.ending.startswith("poison"):
                prompt = tuple(self._prompt(job))
                (self.faults.poisoned_prompts if job.ending == "poison" else self.faults.poisoned_at_join).add(prompt)
        threads_before = threading.active_count()
        threads = [threading.Thread(target=self._consume, args=(job,), daemon=True) for job in jobs]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        problems = [f"job {i} ({job.ending}) never ended" for i, job in enumerate(jobs) if not job.ended]
        problems += self._check_idle(threads_before)
        self.faults.reset()
        if not problems:
            problems += [f"job {i} ({job.ending}): {p}" for i, job in enumerate(jobs) if (p := self._check_job(job))]
        self.schedules += 1
        return problems

    def _prompt(self, job: Job) -> list[int]:
        from fish_worker.dialogue.prompt import fit_prompt

        return fit_prompt(
            self.chat.tokenizer,
            [{"role": "user", "content": job.message}],
            system_prompt=None,
            max_new_tokens=job.budget,
            context_tokens=self.chat.context_tokens,
        ).token_ids

    def _consume(self, job: Job) -> None:
        time.sleep(job.delay_s)
        stream = self.chat.stream_reply([{"role": "user", "content": job.message}], **job.options)
        try:
            for delta in stream:
                job.deltas.append(delta)
                if job.ending in ("close", "abort") and len(job.deltas) > job.after:
                    if job.ending == "close":
                        break
                    aborter = threading.Thread(target=stream.abort)  # from another thread, as spoken_reply does
                    aborter.start()
                    aborter.join()
        except BaseException as exc:  # noqa: BLE001 - recorded and judged by _check_job
            job.error = exc
        finally:
            stream.close()
            job.ended = True

    def _check_idle(self, threads_before: int) -> list[str]:
        batcher = self.chat.batcher
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if batcher.active_rows == 0 and not batcher._waiting and threading.active_count() <= threads_before:
                return []
            time.sleep(0.01)
        return [
            f"batcher not idle: {batcher.active_rows} rows active, {len(batcher._waiting)} waiting, "
            f"{threading.active_count()} threads (were {threads_before})"
        ]

    def _check_job(self, job: Job) -> str | None:
        text = "".join(job.deltas)
        if job.ending == "poison_join":
            return None if _injected(job.error) else f"poisoned prefill ended with {job.error!r}"
        if job.ending == "poison":
            # A poisoned reply that ended at its prefill (end-of-turn or a budget of 1) never reached a step.
            if _injected(job.error) or (job.error is None and len(job.deltas) <= 1):
                return None
            return f"poisoned reply outlived its first step or ended with {job.error!r}"
        if job.error is not None:
            return f"failed: {job.error!r}"
        solo = self.solo_reply(job)
        if job.ending == "natural":
            return None if text == solo else f"reply differs from its solo reply: {text!r} vs {solo!r}"
        return (
            None if solo.startswith(text) else f"stopped reply is not a prefix of its solo reply: {text!r} vs {solo!r}"
        )


def _injected(error: BaseException | None) -> bool:
    return isinstance(error, ChatBackendError) and isinstance(error.__cause__, InjectedFault)


def run(chat: ChatModel, schedules: int, seed: int = 0) -> StressRun:
    stress = StressRun(chat)
    rng = random.Random(seed)
    for number in range(schedules):
        for problem in stress.run_schedule(rng):
            stress.failures.append(f"schedule {number}: {problem}")
    return stress


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, nargs="?", help="a chat model directory (default: the tiny one)")
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # injected faults log errors by design
    model_dir = args.model_dir
    if model_dir is None:
        from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model

        model_dir = write_tiny_chat_model(Path(tempfile.mkdtemp(prefix="chat-stress-")))
    chat = ChatModel.load(model_dir, device="cpu", max_batch=args.max_batch)
    started = time.perf_counter()
    stress = run(chat, args.schedules, args.seed)
    batcher = chat.batcher
    print(
        f"{stress.schedules} schedules in {time.perf_counter() - started:.1f} s: {batcher.steps} steps, "
        f"{batcher.rows_decoded} rows decoded, {batcher.step_failures} failed steps survived, "
        f"{len(stress.failures)} failures"
    )
    for failure in stress.failures[:20]:
        print(failure)
    sys.exit(1 if stress.failures else 0)


if __name__ == "__main__":
    main()
