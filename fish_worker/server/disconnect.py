"""A whole (non-streamed) answer's work stops when its client hangs up before it is ready.

A streamed answer stops by itself: Starlette's StreamingResponse listens for the disconnect and closes
the body's generator, which stops the generation. A whole answer is awaited before any response
exists, so nothing listens: `while_connected` races the work against the client's disconnect and, if
the client goes first, cancels the work (closing a job's or a speech's iterator stops its generation
between two decoding steps) and raises ClientGone, answered 499 to nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before its answer was ready; its work has been stopped."""


async def while_connected(
    request: Request, work: Awaitable[T], on_gone: Callable[[], Awaitable[object]] | None = None
) -> T:
    """`work`'s result, unless the client disconnects first: then `work` is cancelled, `on_gone()` is
    awaited (e.g. an iterator's aclose, or a job's cancel) and ClientGone is raised.

    Call it only once the request's body has been read: the next message is then the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself was cancelled (server shutdown)
        task.cancel()
        raise
    finally:
        if not watcher.done():
            watcher.cancel()
    if task.done():
        try:
            return task.result()
        except BaseException:
            # The task holds this error, and the error's traceback this frame: with the task dropped, no
            # reference cycle keeps the error (and through its frames the request's body) until a GC pass.
            del task, watcher
            raise
    task.cancel()
    await asyncio.wait({task})  # its generator has left its await: it can be closed now
    if not task.cancelled():
        task.exception()  # taken, so asyncio does not log it as never retrieved
    if on_gone is not None:
        await on_gone()
    log.info(
        "%s %s: the client left before its answer was ready; its generation was stopped",
        request.method,
        request.url.path,
    )
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the body has been read: nothing else but an empty "http.request" can come
