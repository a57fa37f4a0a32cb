"""Continuous batching: concurrent requests share each decoding step of one engine thread.

Each request becomes a sequence with its own row ("slot"), KV-cache pages, position, sampling
settings and `torch.Generator`. Between steps, waiting sequences join (their prompt is prefilled
alone, with fish-speech's own `forward_generate` over a cache as long as the prompt, then copied
into their pages) and finished or cancelled ones leave. A sequence joins only when the page pool
holds its prompt plus token budget (reserved whole, so it never runs out mid-way); until then it
waits, in arrival order. A sequence's tokens do not depend on who shares its steps: every per-row
op in `BatchedStep` is row-independent and each row draws from its own generator.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from fish_worker.engine.batched_forward import BatchedStep, PagedKVCache, attended_length
from fish_worker.engine.generation import (
    REPETITION_WINDOW,
    PromptTooLongError,
    SemanticGenerator,
    VoicePrompt,
    short_prefill_cache,
)
from fish_worker.engine.sampling import RowSampling, SamplingParams

log = logging.getLogger(__name__)
_END = object()
# How often a waiting consumer checks that the engine thread is still alive.
_LIVENESS_POLL_S = 0.5


class EngineStoppedError(RuntimeError):
    """The engine thread died; every sequence it held ends with this (a new one starts on the next job)."""


@dataclass(eq=False)
class _Sequence:
    prompt: torch.Tensor  # [rows, prompt_len]
    audio_masks: object
    audio_parts: object
    params: SamplingParams
    generator: torch.Generator
    budget: int
    caller_stop: threading.Event | None  # the job's: set when its consumer goes away
    left: bool = False  # set by the consumer when its generate() call returns or is closed
    done: bool = False  # set by the engine, once, when the sequence's last item is queued
    # Not async_bridge.merge_threads: one engine thread, shared by every sequence, feeds one queue per
    # sequence and outlives each consumer, so no producer thread belongs to (or is joined by) a consumer.
    frames: queue.Queue[Any] = field(default_factory=queue.Queue)  # frames, then an exception or _END
    slot: int = -1
    number: int = field(default_factory=itertools.count().__next__)  # unique for the process's life
    step: int = 0
    # Set when the sequence joins the batch, before any step reads them.
    token: torch.Tensor = field(init=False, repr=False)  # the last frame produced, [rows]; input of the next step
    history: torch.Tensor = field(init=False, repr=False)  # [rows, max(budget, window)]: the repetition-penalty source

    @property
    def stopped(self) -> bool:
        return self.left or (self.caller_stop is not None and self.caller_stop.is_set())

    @property
    def context_tokens(self) -> int:
        """Positions the sequence can fill: its prompt and its token budget."""
        return self.prompt.shape[1] + self.budget

    @property
    def position(self) -> int:
        return self.prompt.shape[1] + self.step

    def window(self) -> torch.Tensor:
        # fish-speech's window: the first 16 slots (zeros included) until 16 tokens exist
        start = max(0, self.step - REPETITION_WINDOW)
        return self.history[:, start : start + REPETITION_WINDOW]


class BatchScheduler:
    """Drop-in for `SemanticGenerator.generate`, decoding up to `max_batch` requests together.

    Ownership: consumers only append to `_waiting` (under `_wake`) and set `seq.left`; everything
    else (slots, the active list, ending a sequence) belongs to the engine thread. The active list is
    rebuilt, never mutated while iterated, and a sequence ends exactly once (`_end`).
    """

    def __init__(
        self, generator: SemanticGenerator, max_batch: int, compile: bool = False, kv_tokens: int | None = None
    ):
        """`kv_tokens`: the page pool's capacity in tokens of context (default: a full context per row)."""
        self.single = generator  # prompt encoding and the batch-1 prefill
        self.model = generator.model
        self.device = generator.device
        self.max_batch = max_batch
        dtype = next(self.model.parameters()).dtype
        kv_tokens = kv_tokens if kv_tokens is not None else max_batch * self.model.config.max_seq_len
        pages = -(-kv_tokens // PagedKVCache.page_size_for(self.model))
        self.caches = PagedKVCache(self.model, max_batch, pages, dtype, self.device)
        self.step_fn = BatchedStep(self.model, self.caches, compile=compile)
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._free_slots = list(range(max_batch))
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run, and rows decoded in them (for logs and the benchmark)
        self.rows_decoded = 0
        self.step_failures = 0  # batched steps that raised (each then retried in halves)
        # The rows' sampling tensors, rebuilt only when the rows change (a join or a leave), not every
        # step: on a GPU each row's settings are three host-to-device copies. Keyed by sequence
        # numbers, never id(): a finished sequence's id can come back as a new one's.
        self._sampling: tuple[tuple[int, ...], RowSampling] | None = None

    @property
    def num_codebooks(self) -> int:
        return self.single.num_codebooks

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def prompt_length(self, text: str, voices: list[VoicePrompt]) -> int:
        return self.single.prompt_length(text, voices)

    def generate(
        self,
        text: str,
        voices: list[VoicePrompt],
        params: SamplingParams,
        generator: torch.Generator,
        stop: threading.Event | None = None,
    ) -> Generator[torch.Tensor, None, None]:
        """Yield codec frames ([num_codebooks] int tensors, on the CPU) until <|im_end|>, the token budget
        or `stop`."""
        prompt, audio_masks, audio_parts, budget = self.single.prepare(text, voices, params)
        seq = _Sequence(prompt.to(self.device), audio_masks, audio_parts, params, generator, budget, stop)
        thread = self._submit(seq)
        try:
            while (item := self._next_item(seq, thread)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.left = True  # the consumer left (or finished): the engine drops the sequence

    def _next_item(self, seq: _Sequence, thread: threading.Thread) -> Any:  # a frame, an error or _END
        """The sequence's next item; an error, never a wait forever, if its engine thread has died."""
        while True:
            try:
                return seq.frames.get(timeout=_LIVENESS_POLL_S)
            except queue.Empty:
                if not thread.is_alive() and seq.frames.empty():
                    return EngineStoppedError("the decode engine stopped")

    def _submit(self, seq: _Sequence) -> threading.Thread:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
                self._thread.start()
            self._waiting.append(seq)
            self._wake.notify()
            return self._thread

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    self._cycle()
        except BaseException as exc:  # a bug of ours: end every sequence rather than strand its consumer
            log.exception("decode engine died")
            self._abandon_all(EngineStoppedError(f"the decode engine stopped: {type(exc).__name__}: {exc}"))

    def _cycle(self) -> None:
        """Admit waiting sequences into free slots, drop stopped ones, run one step for the rest."""
        with self._wake:
            while not self._waiting and not self._active:
                self._wake.wait()
            joining = []
            while self._waiting and self._free_slots:
                seq = self._waiting[0]
                if seq.stopped:  # gone while waiting: it must not hold up the line
                    self._waiting.popleft()
                    self._end(seq, _END)
                    continue
                need = seq.context_tokens
                if self.caches.pages_for(need) > self.caches.pages:  # could never fit: end it now
                    self._waiting.popleft()
                    self._end(
                        seq,
                        PromptTooLongError(
                            f"prompt ({seq.prompt.shape[1]} tokens) plus max_tokens need {need} tokens of KV "
                            f"cache, the worker holds {self.caches.pages * self.caches.page_size} (FISH_KV_CACHE_TOKENS)"
                        ),
                    )
                    continue
                slot = self._free_slots[0]
                if not self.caches.allocate(slot, need):
                    break  # pages come back when a running sequence ends; it waits, first in line
                self._waiting.popleft()
                seq.slot = self._free_slots.pop(0)
                joining.append(seq)
        for seq in joining:
            self._join(seq)
        for seq in self._active:
            if seq.stopped:
                self._end(seq, _END)
        self._active = sorted((s for s in self._active + joining if not s.done), key=lambda s: s.slot)
        if self._active:
            self._step_rows(self._active)
            self._active = [s for s in self._active if not s.done]

    def _join(self, seq: _Sequence) -> None:
        """Prefill one sequence alone; a failure ends only it."""
        if seq.stopped:
            return self._end(seq, _END)
        try:
            rows, prompt_len = seq.prompt.shape
            temperature, top_p, penalty = seq.params.as_tensors(self.device)
            input_pos = torch.arange(0, prompt_len, device=self.device)
            # The prompt's own length (whole pages), not the model's whole context: see short_prefill_cache.
            length = attended_length(prompt_len - 1, self.model.config.max_seq_len)
            with self.single.lock, short_prefill_cache(self.model, length):
                token = self.single.decode_frame(
                    seq.prompt.view(1, rows, prompt_len),
                    input_pos,
                    temperature,
                    top_p,
                    penalty,
                    seq.generator,
                    seq.audio_masks,
                    seq.audio_parts,
                    window=None,
                )
                self.caches.load_prefill(self.model, seq.slot, prompt_len)
        except Exception as exc:
            log.exception("prefill failed for one sequence")
            _release_memory(exc)
            return self._end(seq, exc)
        seq.history = torch.zeros((rows, max(seq.budget, REPETITION_WINDOW)), dtype=torch.int, device=self.device)
        self._emit(seq, token[:, 0], token[:, 0].cpu())

    def _step_rows(self, seqs: list[_Sequence], retried: bool = False) -> None:
        """One decoding step for `seqs`. If it raises, each half is retried, and a lone row once more,
        so a transient fault fails no one and a row that keeps failing ends alone.

        Each row's generator is rewound before a retry, so surviving rows draw exactly what they would
        have drawn: their tokens stay those of a solo run. KV writes of the failed try are overwritten.
        """
        states = [s.generator.get_state() for s in seqs]
        try:
            frames = self._decode_step(seqs)
        except Exception as exc:
            self.step_failures += 1
            _release_memory(exc)
            for seq, state in zip(seqs, states):
                seq.generator.set_state(state)
            if len(seqs) == 1 and retried:
                log.error("decoding step failed twice for one sequence: %s: %s", type(exc).__name__, exc)
                return self._end(seqs[0], exc)
            log.warning(
                "decoding step failed for %d sequence(s) (%s: %s); retrying", len(seqs), type(exc).__name__, exc
            )
            if len(seqs) == 1:
                return self._step_rows(seqs, retried=True)
            half = len(seqs) // 2
            self._step_rows(seqs[:half])
            self._step_rows(seqs[half:])
            return
        on_cpu = frames.cpu()
        for seq, frame, frame_on_cpu in zip(seqs, frames, on_cpu):
            seq.history[:, seq.step] = frame
            seq.step += 1
            self._emit(seq, frame, frame_on_cpu)

    def _decode_step(self, seqs: list[_Sequence]) -> torch.Tensor:
        tokens = torch.stack([s.token for s in seqs])
        positions = torch.tensor([s.position for s in seqs], device=self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        windows = torch.stack([s.window() for s in seqs])
        rows = tuple(s.number for s in seqs)
        if self._sampling is None or self._sampling[0] != rows:
            self._sampling = rows, RowSampling.of([s.params for s in seqs], [s.generator for s in seqs], self.device)
        sampling = self._sampling[1]
        frames = self.step_fn(tokens, positions, slots, sampling, windows)
        self.steps += 1
        self.rows_decoded += len(seqs)
        return frames

    def _emit(self, seq: _Sequence, token: torch.Tensor, on_cpu: torch.Tensor) -> None:
        """Hand out a new frame, or end the sequence (the checks of fish-speech's loop, in its order).

        `token` stays on the device as the next step's input; `on_cpu` is its copy, read here and
        handed out, so a step costs one device-to-host copy rather than a sync per row."""
        if int(on_cpu[0]) == self.single.im_end_id:
            return self._end(seq, _END)
        seq.frames.put(on_cpu[1:].clone())
        if seq.step == seq.budget - 1 or seq.stopped:
            return self._end(seq, _END)
        seq.token = token

    def _end(self, seq: _Sequence, last: object) -> None:
        """The one way a sequence ends: its slot is freed first (a consumer seeing the end finds it
        free), then its last item (_END or an exception) is queued. Idempotent."""
        if seq.done:
            return
        seq.done = True
        if seq.slot >= 0:
            self.caches.free(seq.slot)
            self._free_slots.append(seq.slot)
            self._free_slots.sort()
            seq.slot = -1
        seq.frames.put(last)

    def _abandon_all(self, exc: BaseException) -> None:
        with self._wake:
            pending = list(self._waiting) + self._active
            self._waiting.clear()
            self._active = []
            for seq in pending:
                self._end(seq, exc)
            # Slots of sequences half-way through joining are not in either list: start afresh, and
            # let the next job start a new engine thread.
            self._free_slots = list(range(self.max_batch))
            self.caches.reset()
            self._thread = None


def _release_memory(exc: BaseException) -> None:
    """After an out-of-memory error, hand cached blocks back so the retry (or the next job) can fit."""
    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
