"""Concurrent transcriptions, run together: one batch through Whisper's encoder and decoder.

The same scheme as the codec's decode batcher (engine/codec_batching.py): no thread of its own. A
caller that finds no batch running takes the waiting requests (oldest first, up to `max_batch`, and
only those `fits` lets share a batch) and runs them as one call while the others wait for their
result. Requests arriving meanwhile form the next batch, so a lone request waits for nothing and a
busy worker batches by itself. One batch runs at a time, which bounds the activation memory.

A failed batch is retried one request at a time, so one bad request fails only itself; a batch
interrupted by anything else (KeyboardInterrupt) fails the requests it held instead of leaving them waiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchInterrupted(RuntimeError):
    """The batch holding this request stopped without a result (its thread was interrupted)."""


@dataclass(eq=False)
class _Request(Generic[Item, Result]):
    item: Item
    result: Result | None = None
    error: BaseException | None = None
    done: bool = False

    def finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


class Batcher(Generic[Item, Result]):
    """`run(item)` from any thread; concurrent calls share batches of `run_many`.

    `run_many(items)` returns one result per item, in order. `fits(batch, item)` says whether `item`
    may join `batch` (default: always); the first request of a batch is always taken.
    """

    def __init__(
        self,
        run_many: Callable[[Sequence[Item]], list[Result]],
        max_batch: int,
        fits: Callable[[Sequence[Item], Item], bool] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_many = run_many
        self._fits = fits or (lambda batch, item: True)
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: deque[_Request[Item, Result]] = deque()
        self._busy = False
        self.batches = 0  # run_many calls made, and the requests they carried: for tests and the bench
        self.requests = 0

    def run(self, item: Item) -> Result:
        request: _Request[Item, Result] = _Request(item)
        with self._cond:
            self._pending.append(request)
        while True:
            with self._cond:
                while self._busy and not request.done:
                    self._cond.wait()
                if request.done:
                    break
                batch = self._take()
                self._busy = True
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # done without error: a result was set

    def _take(self) -> list[_Request[Item, Result]]:
        """The oldest request, then the following ones that fit with it, up to max_batch (in order)."""
        batch = [self._pending.popleft()]
        kept: deque[_Request[Item, Result]] = deque()
        while self._pending and len(batch) < self.max_batch:
            candidate = self._pending.popleft()
            if self._fits([r.item for r in batch], candidate.item):
                batch.append(candidate)
            else:
                kept.append(candidate)
        self._pending.extendleft(reversed(kept))
        return batch

    def _run(self, batch: list[_Request[Item, Result]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            if len(batch) > 1:
                try:
                    results = self._run_many([r.item for r in batch])
                    for request, result in zip(batch, results, strict=True):
                        request.finish(result=result)
                except Exception:
                    pass  # retried alone below: only a request that fails alone gets an error
            for request in (r for r in batch if not r.done):
                try:
                    request.finish(result=self._run_many([request.item])[0])
                except Exception as exc:
                    request.finish(error=exc)
        finally:  # anything else (an interrupt) must not leave the batch's callers waiting
            for request in batch:
                if not request.done:
                    request.finish(error=BatchInterrupted("the transcription batch was interrupted"))
