"""Concurrent jobs' codec decodes, run together: one padded batch instead of one call per job.

The DAC decoder is causal, so a row padded on the right decodes to the same samples as it does
alone (tests/test_codec_batching.py). There is no thread of its own: a caller that finds no decode
running takes the waiting requests (oldest first, up to `max_frames` padded frames) and runs them as
one batch while the others wait for their result. Requests that arrive during a decode form the next
batch, so a lone request waits for nothing and a busy worker batches by itself. One decode runs at a
time, which also bounds the codec's activation memory however many jobs finish at once.

A failed batch is retried one request at a time, so one bad request fails only itself; a decode
interrupted by anything else fails the requests it held instead of leaving them waiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DecodeMany = Callable[[Sequence[torch.Tensor]], list[np.ndarray]]


class CodecDecodeInterrupted(RuntimeError):
    """The decode holding this request stopped without a result (its thread was interrupted)."""


@dataclass(eq=False)
class _Request:
    codes: torch.Tensor  # [num_codebooks, frames], or a streamed window's latent [dim, frames] (Codec.decode_window)
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False

    def finish(self, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


class DecodeBatcher:
    """`decode(codes)` from any thread; concurrent calls share padded batches of `decode_many`."""

    def __init__(self, decode_many: DecodeMany, max_frames: int):
        self._decode_many = decode_many
        self.max_frames = max_frames  # rows × longest row, per batch (a longer request runs alone)
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._busy = False
        self.batches = 0  # decode calls made, and the requests they carried: for tests and the bench
        self.requests = 0

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        request = _Request(codes)
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
        assert request.result is not None
        return request.result

    def _take(self) -> list[_Request]:
        """The oldest requests whose padded batch stays within max_frames (always at least one)."""
        batch = [self._pending.popleft()]
        longest = batch[0].codes.shape[1]
        while self._pending:
            candidate = max(longest, self._pending[0].codes.shape[1])
            if candidate * (len(batch) + 1) > self.max_frames:
                break
            batch.append(self._pending.popleft())
            longest = candidate
        return batch

    def _run(self, batch: list[_Request]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            if len(batch) > 1:
                try:
                    for request, audio in zip(batch, self._decode_many([r.codes for r in batch]), strict=True):
                        request.finish(result=audio)
                except Exception:
                    pass  # retried alone below: only a request that fails alone gets an error
            for request in (r for r in batch if not r.done):
                try:
                    request.finish(result=self._decode_many([request.codes])[0])
                except Exception as exc:
                    request.finish(error=exc)
        finally:  # anything else (an interrupt) must not leave the batch's callers waiting
            for request in batch:
                if not request.done:
                    request.finish(error=CodecDecodeInterrupted("the codec decode was interrupted"))
