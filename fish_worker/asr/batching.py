"""Concurrent transcriptions, run together: one batch through Whisper's encoder and decoder.

The same scheme as the codec's decode batcher (engine/codec_batching.py): no thread of its own. A
caller that finds no batch running takes the waiting requests (oldest first, up to `max_batch`, and
only those `fits` lets share a batch) and runs them as one call while the others wait for their
result. Requests arriving meanwhile form the next batch, so a lone request waits for nothing and a
busy worker batches by itself. One batch runs at a time, which bounds the activation memory.

A failed batch is retried one request at a time, so one bad request fails only itself; a batch
interrupted by anything else (KeyboardInterrupt) fails the requests it held instead of leaving them waiting.

A request can be stopped (`run(item, stop)`, the event set from another thread): still waiting, it leaves
the queue at once; in a running batch, `run_many` gets every request's stop event, and the recognizer
drops a stopped row at its next step (the batch goes on for the others, and ends early when every row
has stopped). A stopped request ends with `stopped()` raised, never with a result and never retried. Its
caller returns as soon as it is stopped, unless that caller is the one running the batch: that one
returns when the batch ends (its row no longer costs anything).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchStopped(RuntimeError):
    """The request's stop event was set before it had a result (the default `stopped()`)."""


class BatchInterrupted(RuntimeError):
    """The batch holding this request stopped without a result (its thread was interrupted)."""


@dataclass(eq=False)
class _Request(Generic[Item, Result]):
    item: Item
    stop: threading.Event
    result: Result | None = None
    error: BaseException | None = None
    done: bool = False

    def finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


# How often a caller with a stop event looks at it while its request waits.
STOP_POLL_S = 0.05


class Batcher(Generic[Item, Result]):
    """`run(item, stop)` from any thread; concurrent calls share batches of `run_many`.

    `run_many(items, stops)` returns one result per item, in order; `stops` are the requests' stop events
    (it may end a stopped item's work early and return anything for it). `fits(batch, item)` says whether
    `item` may join `batch` (default: always); the first request of a batch is always taken. `stopped()`
    makes the exception a stopped request raises.
    """

    def __init__(
        self,
        run_many: Callable[[Sequence[Item], Sequence[threading.Event]], list[Result]],
        max_batch: int,
        fits: Callable[[Sequence[Item], Item], bool] | None = None,
        stopped: Callable[[], BaseException] = lambda: BatchStopped("the request was stopped"),
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_many = run_many
        self._fits = fits or (lambda batch, item: True)
        self._stopped = stopped
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: deque[_Request[Item, Result]] = deque()
        self._busy = False
        self.batches = 0  # run_many calls made, and the requests they carried: for tests and the bench
        self.requests = 0

    @property
    def idle(self) -> bool:
        """No batch running and no request waiting (for tests: every request has ended)."""
        with self._cond:
            return not self._busy and not self._pending

    def run(self, item: Item, stop: threading.Event | None = None) -> Result:
        request: _Request[Item, Result] = _Request(item, stop or threading.Event())
        with self._cond:
            self._pending.append(request)
        while True:
            with self._cond:
                while self._busy and not request.done and not request.stop.is_set():
                    self._cond.wait(STOP_POLL_S if stop is not None else None)
                if request.stop.is_set() and not request.done:
                    # Waiting: it leaves the queue. In a running batch: its row is dropped there, and
                    # whoever runs that batch finishes the request; this caller need not wait for it.
                    if request in self._pending:
                        self._pending.remove(request)
                    raise self._stopped()
                if request.done:
                    break
                batch = self._take()
                if not batch:
                    continue  # its own request was stopped meanwhile: seen at the top of the loop
                self._busy = True
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if request.stop.is_set():
            raise self._stopped()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # done without error: a result was set

    def _take(self) -> list[_Request[Item, Result]]:
        """The oldest request, then the following ones that fit with it, up to max_batch (in order);
        none when every waiting request has been stopped."""
        # A stopped request left in the queue is skipped: its caller leaves by itself (run()).
        self._pending = deque(r for r in self._pending if not r.stop.is_set())
        if not self._pending:
            return []
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
                    results = self._run_many([r.item for r in batch], [r.stop for r in batch])
                    for request, result in zip(batch, results, strict=True):
                        request.finish(result=result)
                except Exception:
                    pass  # retried alone below: only a request that fails alone gets an error
            for request in (r for r in batch if not r.done):
                if request.stop.is_set():  # a stopped request is never retried
                    request.finish(error=self._stopped())
                    continue
                try:
                    request.finish(result=self._run_many([request.item], [request.stop])[0])
                except Exception as exc:
                    request.finish(error=exc)
        finally:  # anything else (an interrupt) must not leave the batch's callers waiting
            for request in batch:
                if not request.done:
                    request.finish(error=BatchInterrupted("the transcription batch was interrupted"))
