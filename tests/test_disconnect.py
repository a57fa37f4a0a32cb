"""server/disconnect.py's while_connected: an error of the work reaches the door without a reference cycle
(a cycle through the task that holds the error would keep the request's body alive until a GC pass)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from starlette.requests import Request

from fish_worker.errors import JobInputError
from fish_worker.server.disconnect import while_connected

pytestmark = pytest.mark.timeout(30)


class Body:
    """Stands for a request's body: only a weak reference is kept by the test."""


def connected_request() -> Request:
    async def receive() -> dict:
        await asyncio.Event().wait()  # the client stays: no disconnect ever comes
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_an_error_escaping_while_connected_frees_the_work_s_input_at_once():
    async def main() -> weakref.ref:
        body = Body()
        held = weakref.ref(body)

        async def work(body: Body) -> None:
            await asyncio.sleep(0)
            raise JobInputError("audio", "is not a readable audio file")

        try:
            await while_connected(connected_request(), work(body))
        except JobInputError:
            pass
        del body
        return held

    gc.disable()
    try:
        assert asyncio.run(main())() is None
    finally:
        gc.enable()


def test_while_connected_returns_the_work_s_result():
    async def main() -> int:
        async def work() -> int:
            await asyncio.sleep(0)
            return 7

        return await while_connected(connected_request(), work())

    assert asyncio.run(main()) == 7
