"""Continuous batching for the local chat model: concurrent replies share each decoding step.

One engine thread holds up to `max_batch` active replies. Between steps, waiting replies join (their
prompt is prefilled alone, which also picks their first token) and finished or abandoned ones leave;
each step then runs one forward over every active row (batched_decode.py). Each reply keeps its own
temperature, seed (its own torch.Generator) and token budget, and its tokens go to its own queue.

A failing step is retried in halves, each row's generator rewound first, so a transient fault fails
no one and a row that keeps failing ends alone with ChatBackendError; a failing prefill ends only its
reply. The engine thread outlives every reply (like the speech engine's BatchScheduler); if it dies,
every reply it held ends with an error and the next reply starts a new one.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from fish_worker.dialogue.backend import ChatBackendError
from fish_worker.dialogue.batched_decode import BatchedDecoder, RowCache
from fish_worker.dialogue.sampling import SeededSampler, make_generator

log = logging.getLogger(__name__)
_END = object()
_LIVENESS_POLL_S = 0.5  # how often a waiting consumer checks that the engine thread is alive


@dataclass(eq=False)
class _Reply:
    prompt: list[int]
    budget: int
    sampler: SeededSampler | None  # None: greedy
    tokens: list[int] = field(default_factory=list)
    cache: RowCache | None = None
    left: bool = False  # set by the consumer (or abort()): the engine drops the reply at its next cycle
    done: bool = False  # set by the engine, once, when the reply's last item is queued
    out: queue.Queue[Any] = field(default_factory=queue.Queue)  # token ids, then _END or an exception
    ended: threading.Event = field(default_factory=threading.Event)
    number: int = field(default_factory=itertools.count().__next__)

    def row_cache(self) -> RowCache:
        assert self.cache is not None, "a reply steps only after its prefill, and until it ends"
        return self.cache


class TokenStream:
    """One reply's token ids as the engine writes them. `close()` (consumer) and `abort()` (any thread)
    end the reply; close also waits, briefly, until the engine has let go of the reply's row."""

    def __init__(self, batcher: ChatBatcher, reply: _Reply, engine: threading.Thread):
        self._batcher = batcher
        self._reply = reply
        self._engine = engine
        self._finished = False

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._reply.out.get(timeout=_LIVENESS_POLL_S)
                break
            except queue.Empty:
                if not self._engine.is_alive() and self._reply.out.empty():
                    item = ChatBackendError("chat backend failed: the local chat engine thread stopped")
                    break
        if item is _END or isinstance(item, BaseException):
            self._finished = True
            self._reply.left = True
            if isinstance(item, BaseException):
                raise item
            raise StopIteration
        return int(item)

    def abort(self) -> None:
        self._reply.left = True
        self._reply.out.put(_END)  # wakes a consumer waiting for the next token
        self._batcher.wake()

    def close(self) -> None:
        self._finished = True
        self._reply.left = True
        self._batcher.wake()
        # The row is freed at the engine's next cycle (within a step); waiting keeps "closed" meaning
        # "no longer decoded". Bounded: a dead or stuck engine does not hold the consumer.
        self._reply.ended.wait(timeout=5.0)


class ChatBatcher:
    """Decodes up to `max_batch` replies together on one engine thread.

    Ownership: consumers only append to `_waiting` (under `_wake`) and set `reply.left`; the active
    list, the rows' caches and ending a reply belong to the engine thread (`_end`, exactly once).
    """

    def __init__(
        self, decoder: BatchedDecoder, *, max_batch: int, eos_token_ids: list[int], processors: LogitsProcessorList
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.decoder = decoder
        self.max_batch = max_batch
        self.eos_token_ids = set(eos_token_ids)
        self.processors = processors
        self._waiting: deque[_Reply] = deque()
        self._active: list[_Reply] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run and rows decoded in them (for the benchmark and logs)
        self.rows_decoded = 0
        self.step_failures = 0

    @property
    def active_rows(self) -> int:
        """Replies holding a row (and its KV cache) now."""
        return sum(not reply.done for reply in list(self._active))

    def generate(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> TokenStream:
        """The reply's token ids (without the end-of-turn token), at most `max_new_tokens` of them."""
        sampler = None
        if temperature > 0:
            sampler = SeededSampler(make_generator(self.decoder.device, seed), temperature, top_k, top_p)
        reply = _Reply(list(prompt), max_new_tokens, sampler)
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="chat-engine", daemon=True)
                self._thread.start()
            self._waiting.append(reply)
            self._wake.notify()
            return TokenStream(self, reply, self._thread)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    self._cycle()
        except BaseException as exc:  # a bug of ours: end every reply rather than strand its consumer
            log.exception("chat engine died")
            self._abandon_all(
                ChatBackendError(f"chat backend failed: the local chat engine stopped ({type(exc).__name__}: {exc})")
            )

    def _cycle(self) -> None:
        with self._wake:
            while not self._waiting and not self._active:
                self._wake.wait()
            for reply in [r for r in self._waiting if r.left]:  # gone while waiting: out of the line
                self._waiting.remove(reply)
                self._end(reply, _END)
            joining: list[_Reply] = []
            while self._waiting and len(self._active) + len(joining) < self.max_batch:
                joining.append(self._waiting.popleft())
        for reply in self._active:
            if reply.left:
                self._end(reply, _END)
        for reply in joining:
            self._join(reply)
        self._active = [r for r in self._active + joining if not r.done]
        if self._active:
            self._step_rows(self._active)
            self._active = [r for r in self._active if not r.done]

    def _join(self, reply: _Reply) -> None:
        """Prefill one reply alone and pick its first token; a failure ends only it."""
        state = reply.sampler.generator.get_state() if reply.sampler else None
        try:
            logits, reply.cache = self.decoder.prefill(reply.prompt, len(reply.prompt) + reply.budget)
            token = self._choose(reply, logits)
        except Exception as exc:
            log.exception("chat prefill failed for one reply")
            _release_memory(exc)
            if state is not None and reply.sampler is not None:
                reply.sampler.generator.set_state(state)
            return self._end(reply, _failed("the chat model failed to read the prompt", exc))
        self._emit(reply, token)

    def _step_rows(self, replies: list[_Reply], retried: bool = False) -> None:
        """One step for `replies`; on failure each half is retried, and a lone row once more."""
        states = [r.sampler.generator.get_state() if r.sampler else None for r in replies]
        try:
            logits = self.decoder.step([r.tokens[-1] for r in replies], [r.row_cache() for r in replies])
            chosen = [self._choose(r, row_logits) for r, row_logits in zip(replies, logits)]
        except Exception as exc:
            self.step_failures += 1
            _release_memory(exc)
            for reply, state in zip(replies, states):
                if state is not None and reply.sampler is not None:
                    reply.sampler.generator.set_state(state)
            if len(replies) == 1 and retried:
                log.error("chat decoding step failed twice for one reply: %s: %s", type(exc).__name__, exc)
                return self._end(replies[0], _failed("the chat model failed mid-reply", exc))
            log.warning(
                "chat decoding step failed for %d reply(s) (%s: %s); retrying", len(replies), type(exc).__name__, exc
            )
            if len(replies) == 1:
                return self._step_rows(replies, retried=True)
            half = len(replies) // 2
            self._step_rows(replies[:half])
            self._step_rows(replies[half:])
            return
        self.steps += 1
        self.rows_decoded += len(replies)
        for reply, token in zip(replies, chosen):
            self._emit(reply, token)

    def _choose(self, reply: _Reply, logits: torch.Tensor) -> int:
        """The reply's next token from its logits: the model's processors, then its own sampler (or argmax)."""
        scores = logits.view(1, -1)
        if self.processors:
            seen = torch.tensor([reply.prompt + reply.tokens], device=scores.device)
            scores = self.processors(seen, scores)  # type: ignore[arg-type]  # transformers types logits with the legacy torch.FloatTensor/LongTensor classes; torch ops give torch.Tensor
        if reply.sampler is not None:
            scores = reply.sampler(None, scores)  # type: ignore[arg-type]  # the sampler reads no input_ids; see above
        return int(scores.argmax(dim=-1))

    def _emit(self, reply: _Reply, token: int) -> None:
        if token in self.eos_token_ids:
            return self._end(reply, _END)
        reply.tokens.append(token)
        reply.out.put(token)
        if len(reply.tokens) >= reply.budget or reply.left:
            self._end(reply, _END)

    def _end(self, reply: _Reply, last: object) -> None:
        """The one way a reply ends: its cache is dropped, then its last item is queued. Idempotent."""
        if reply.done:
            return
        reply.done = True
        reply.cache = None
        reply.out.put(last)
        reply.ended.set()

    def _abandon_all(self, exc: BaseException) -> None:
        with self._wake:
            pending = list(self._waiting) + self._active
            self._waiting.clear()
            self._active = []
            for reply in pending:
                self._end(reply, exc)
            self._thread = None


def _failed(what: str, exc: BaseException) -> ChatBackendError:
    error = ChatBackendError(f"chat backend failed: {what} ({type(exc).__name__}: {exc})")
    error.__cause__ = exc
    return error


def row_processors(generation_config, device: torch.device) -> LogitsProcessorList:
    """The model's own non-sampling logits processors from its generation_config.json, applied per row
    in the order `generate()` applies them: repetition penalty, no-repeat n-grams, suppressed tokens."""
    processors = LogitsProcessorList()
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=penalty))
    ngram = getattr(generation_config, "no_repeat_ngram_size", None)
    if ngram:
        processors.append(NoRepeatNGramLogitsProcessor(ngram))
    suppress = getattr(generation_config, "suppress_tokens", None)
    if suppress:
        processors.append(SuppressTokensLogitsProcessor(suppress, device=str(device)))
    return processors


def _release_memory(exc: BaseException) -> None:
    """After an out-of-memory error, hand cached blocks back so the retry (or the next reply) can fit."""
    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
