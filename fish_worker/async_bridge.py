"""Drive a blocking generator from asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Run `make_iterator(stop)` on its own thread and yield its items here.

    If the consumer goes away (job cancelled or timed out), `stop` is set so the producer can
    end between steps instead of generating audio nobody will receive.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def hand_over(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            stop.set()

    def produce() -> None:
        try:
            for item in make_iterator(stop):
                hand_over(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            hand_over(exc)
        finally:
            hand_over(_DONE)

    thread = threading.Thread(target=produce, name="synthesis", daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
