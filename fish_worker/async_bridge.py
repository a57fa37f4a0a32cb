"""The one thread→iterator bridge: blocking producers on their own threads, their items consumed here.

    for item in merge_threads(write, say, stop=job_stop):     # sync: several producers, one stream
        ...
    async for item in iterate_in_thread(make_iterator):       # async: one blocking iterator, from asyncio
        ...
    result = await call_in_thread(work)                       # async: one blocking call, stopped if cancelled

A producer is `produce(emit, stop)`: it calls `emit(item)` for each item and should return soon after
`stop` is set (the consumer left, failed, or the caller's stop was set). Whatever it raises is re-raised
to the consumer; its end (normal or not) is always reported, so the consumer never waits on a dead thread.
The consumer leaving early sets `stop`; the sync form then joins every producer thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Emit = Callable[[Any], None]
Producer = Callable[[Emit, threading.Event], None]

# How often the sync consumer looks at the caller's stop flag while no item arrives.
STOP_POLL_S = 0.1


@dataclass(frozen=True)
class _Failed:
    """A producer's exception, wrapped so an item that happens to be an exception is still an item."""

    error: BaseException


_END = object()  # one producer has finished
_NOTHING = object()  # no event arrived within poll_s


def from_iterator(make_iterator: Callable[[threading.Event], Iterator[T]]) -> Producer:
    """A producer emitting the items of `make_iterator(stop)`, leaving between items once stop is set."""

    def produce(emit: Emit, stop: threading.Event) -> None:
        for item in make_iterator(stop):
            emit(item)
            if stop.is_set():
                return

    return produce


def _start(produce: Producer, send: Emit, stop: threading.Event, name: str) -> threading.Thread:
    """Run `produce` on a daemon thread; its items, then its error if any, then its end go to `send`."""

    def run() -> None:
        try:
            produce(send, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            send(_Failed(exc))
        finally:
            send(_END)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def merge_threads(
    *producers: Producer,
    stop: threading.Event | None = None,
    name: str = "producer",
    poll_s: float = STOP_POLL_S,
) -> Iterator[Any]:
    """Yield every producer's items as they arrive (each producer's in its own order) until all have ended.

    The first error raised by a producer is re-raised here. `stop` (the caller's, e.g. a cancelled job)
    ends the stream as if the consumer had left. On the way out, however it ends, every producer is
    told to stop and joined. Close the generator (or exhaust it) to release the threads.
    """
    events: queue.Queue[Any] = queue.Queue()  # items, _Failed, _END
    halt = threading.Event()
    threads = [
        _start(produce, events.put, halt, f"{name}-{getattr(produce, '__name__', 'producer')}") for produce in producers
    ]
    running = len(threads)
    try:
        while running:
            try:
                event = events.get(timeout=poll_s if stop is not None else None)
            except queue.Empty:
                event = _NOTHING  # nothing yet: look at the caller's stop
            if stop is not None and stop.is_set():  # also while items keep coming
                return
            if event is _NOTHING:
                continue
            if event is _END:
                running -= 1
            elif isinstance(event, _Failed):
                error, event = event.error, None  # no local keeps it: see iterate_in_thread
                try:
                    raise error
                finally:
                    del error
            else:
                yield event
    finally:
        halt.set()
        for thread in threads:
            thread.join()


async def iterate_in_thread(
    make_iterator: Callable[[threading.Event], Iterator[T]], *, name: str = "synthesis"
) -> AsyncGenerator[T, None]:  # a generator: callers close it to stop the thread
    """Run `make_iterator(stop)` on its own thread and yield its items here, never blocking the loop.

    If the consumer goes away (job cancelled or timed out), `stop` is set so the producer can end
    between steps instead of generating audio nobody will receive. The thread is not joined (that
    would block the loop); it ends by itself at its next step.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Any] = asyncio.Queue()  # the iterator's items, _Failed, _END
    stop = threading.Event()

    def send(event: object) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            stop.set()

    _start(from_iterator(make_iterator), send, stop, name)
    try:
        while (event := await events.get()) is not _END:
            if isinstance(event, _Failed):
                # Raised with no local left holding it: this frame, in the error's traceback, would
                # otherwise keep it (and through it the producer's frames: a job's whole input) in a
                # reference cycle until a GC pass.
                error, event = event.error, None
                try:
                    raise error
                finally:
                    del error
            yield event
    finally:
        stop.set()


async def call_in_thread(work: Callable[[threading.Event], T]) -> T:
    """`work(stop)` run on a thread, its result returned here without blocking the loop.

    If the caller is cancelled (its client hung up, its job was cancelled), `stop` is set and the thread
    awaited before CancelledError goes on: `work` should return (or raise) soon after `stop` is set, so
    whoever holds a slot for this work gives it back only once the work has really ended.
    """
    stop = threading.Event()
    running: asyncio.Future[T] | None = asyncio.ensure_future(asyncio.to_thread(work, stop))
    assert running is not None
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({running})  # quick once `work` sees `stop`
        if not running.cancelled():
            running.exception()  # taken, so asyncio does not log it as never retrieved
        raise
    except BaseException:
        # `running` holds the error, whose traceback holds this frame: dropped, so no reference cycle keeps
        # the error (and through its frames `work`'s input: a whole request body) alive until a GC pass.
        running = None
        raise
