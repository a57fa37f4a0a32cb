"""Continuous batching: concurrent requests share each decoding step of one engine thread.

Each request becomes a sequence with its own KV-cache slot, position, sampling settings and
`torch.Generator`. Between steps, waiting sequences join (their prompt is prefilled alone, with
fish-speech's own `forward_generate`, then copied into their slot) and finished or cancelled ones
leave. A sequence's tokens do not depend on who shares its steps: every per-row op in
`BatchedStep` is row-independent and each row draws from its own generator.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fish_worker.engine.batched_forward import BatchedStep, SlotCaches
from fish_worker.engine.generation import REPETITION_WINDOW, SemanticGenerator, VoicePrompt
from fish_worker.engine.sampling import RowSampling, SamplingParams

log = logging.getLogger(__name__)
_END = object()


@dataclass(eq=False)
class _Sequence:
    prompt: torch.Tensor  # [rows, prompt_len]
    audio_masks: object
    audio_parts: object
    params: SamplingParams
    generator: torch.Generator
    budget: int
    caller_stop: threading.Event | None  # the job's: set when its consumer goes away
    left: bool = False  # set when this generate() call returns or is closed
    frames: queue.Queue = field(default_factory=queue.Queue)  # frames, then an exception or _END
    slot: int = -1
    step: int = 0
    token: torch.Tensor | None = None  # the last frame produced, [rows]; input of the next step
    history: torch.Tensor | None = None  # [rows, max(budget, window)]: the repetition-penalty source

    @property
    def stopped(self) -> bool:
        return self.left or (self.caller_stop is not None and self.caller_stop.is_set())

    @property
    def position(self) -> int:
        return self.prompt.shape[1] + self.step

    def window(self) -> torch.Tensor:
        # fish-speech's window: the first 16 slots (zeros included) until 16 tokens exist
        start = max(0, self.step - REPETITION_WINDOW)
        return self.history[:, start : start + REPETITION_WINDOW]


class BatchScheduler:
    """Drop-in for `SemanticGenerator.generate`, decoding up to `max_batch` requests together."""

    def __init__(self, generator: SemanticGenerator, max_batch: int, compile: bool = False):
        self.single = generator  # prompt encoding and the batch-1 prefill
        self.model = generator.model
        self.device = generator.device
        self.max_batch = max_batch
        dtype = next(self.model.parameters()).dtype
        self.caches = SlotCaches(self.model, max_batch, dtype, self.device)
        self.step_fn = BatchedStep(self.model, self.caches, compile=compile)
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._free_slots = list(range(max_batch))
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run, and rows decoded in them (for logs and the benchmark)
        self.rows_decoded = 0

    @property
    def num_codebooks(self) -> int:
        return self.single.num_codebooks

    def prompt_length(self, text: str, voices: list[VoicePrompt]) -> int:
        return self.single.prompt_length(text, voices)

    def generate(
        self,
        text: str,
        voices: list[VoicePrompt],
        params: SamplingParams,
        generator: torch.Generator,
        stop: threading.Event | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield codec frames ([num_codebooks] int tensors) until <|im_end|>, the token budget or `stop`."""
        prompt, audio_masks, audio_parts, budget = self.single.prepare(text, voices, params)
        seq = _Sequence(prompt.to(self.device), audio_masks, audio_parts, params, generator, budget, stop)
        self._submit(seq)
        try:
            while (item := seq.frames.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.left = True  # the consumer left (or finished): the engine drops the sequence

    def _submit(self, seq: _Sequence) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
                self._thread.start()
            self._waiting.append(seq)
            self._wake.notify()

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._waiting and not self._active:
                        self._wake.wait()
                    joining = []
                    while self._waiting and self._free_slots:
                        seq = self._waiting.popleft()
                        seq.slot = self._free_slots.pop(0)
                        joining.append(seq)
                for seq in joining:
                    self._guarded([seq], self._join, seq)
                self._active = [s for s in self._active if not self._done_if_stopped(s)]
                if self._active:
                    self._guarded(list(self._active), self._decode_step)

    def _guarded(self, seqs: list[_Sequence], fn, *args) -> None:
        """A failing step fails the sequences in it, never the engine."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("decoding step failed for %d sequence(s)", len(seqs))
            for seq in seqs:
                self._leave(seq)
                seq.frames.put(exc)

    def _join(self, seq: _Sequence) -> None:
        if seq.stopped:
            return self._finish(seq)
        self._active.append(seq)
        self._active.sort(key=lambda s: s.slot)  # rows in slot order keep the cache reads copy-free
        rows, prompt_len = seq.prompt.shape
        temperature, top_p, penalty = seq.params.as_tensors(self.device)
        input_pos = torch.arange(0, prompt_len, device=self.device)
        token = self.single._decode_one(seq.prompt.view(1, rows, prompt_len), input_pos, temperature, top_p,
                                        penalty, seq.generator, seq.audio_masks, seq.audio_parts, window=None)
        self.caches.load_prefill(self.model, seq.slot, prompt_len)
        seq.history = torch.zeros((rows, max(seq.budget, REPETITION_WINDOW)), dtype=torch.int, device=self.device)
        self._emit(seq, token[:, 0])

    def _decode_step(self) -> None:
        seqs = self._active
        tokens = torch.stack([s.token for s in seqs])
        positions = torch.tensor([s.position for s in seqs], device=self.device)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        windows = torch.stack([s.window() for s in seqs])
        sampling = RowSampling.of([s.params for s in seqs], [s.generator for s in seqs], self.device)
        frames = self.step_fn(tokens, positions, slots, sampling, windows)
        self.steps += 1
        self.rows_decoded += len(seqs)
        for seq, frame in zip(list(seqs), frames):
            seq.history[:, seq.step] = frame
            seq.step += 1
            self._emit(seq, frame)

    def _emit(self, seq: _Sequence, token: torch.Tensor) -> None:
        """Hand out a new frame, or end the sequence (the checks of fish-speech's loop, in its order)."""
        if int(token[0]) == self.single.im_end_id:
            return self._finish(seq)
        seq.frames.put(token[1:].clone())
        if seq.step == seq.budget - 1 or seq.stopped:
            return self._finish(seq)
        seq.token = token

    def _done_if_stopped(self, seq: _Sequence) -> bool:
        if seq.stopped and seq.slot >= 0:
            self._finish(seq)
            return True
        return seq.slot < 0

    def _finish(self, seq: _Sequence) -> None:
        self._leave(seq)  # first, so a consumer that sees the end finds the slot free
        seq.frames.put(_END)

    def _leave(self, seq: _Sequence) -> None:
        if seq.slot >= 0:
            self._free_slots.append(seq.slot)
            self._free_slots.sort()
            seq.slot = -1
        if seq in self._active:
            self._active.remove(seq)
