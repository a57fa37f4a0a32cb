"""A tiny OpenAI-compatible chat engine that misbehaves on demand, for what a real engine won't do when asked.

    with StubEngine() as engine:                  # listening on 127.0.0.1:<engine.port>
        engine.behaviour = "break"                # how it answers the next chat requests
        ... RemoteChatBackend(engine.base_url) ...
        engine.requests[-1]                       # the JSON body and headers it got

Raw HTTP/1.1 on asyncio streams, so it can send exactly the broken bytes a test needs (a stream cut off
without its last chunk, a chunk that is not JSON). One request per connection (`Connection: close`).
Behaviours: ok, slow (ok, 20 ms between chunks), 401, 429, silent (never answers), stall (one delta,
then silence until the client hangs up: sets `disconnected`), break, malformed, bad_shape, no_finish,
error_event.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

REPLY = ["Hello there. ", "How are ", "you today?"]


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: dict | None


def chunk(content: str | None = None, finish_reason: str | None = None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stub-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def sse(data: dict | str, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


class StubEngine:
    def __init__(self):
        self.behaviour = "ok"
        self.requests: list[Seen] = []
        self.disconnected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="stub-engine", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubEngine:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def shut():
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split()[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            raw = await reader.readexactly(int(headers.get("content-length", 0)))
            body = json.loads(raw) if raw else None
            self.requests.append(Seen(path, headers, body))
            if path.endswith("/models"):
                await self._json(writer, 200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
            else:
                await self._chat(reader, writer, self.behaviour)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _json(self, writer, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _chat(self, reader, writer, behaviour: str) -> None:
        if behaviour == "401":
            return await self._json(
                writer,
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
        if behaviour == "429":
            return await self._json(writer, 429, {"error": {"message": "Too many requests", "type": "rate_limit"}})
        if behaviour == "silent":
            await reader.read()  # until the client hangs up
            return

        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )

        async def send(data: bytes) -> None:
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        if behaviour in ("ok", "slow"):
            for piece in REPLY:
                await send(sse(chunk(piece)))
                if behaviour == "slow":
                    await asyncio.sleep(0.02)
            await send(sse(chunk(finish_reason="stop")) + sse("[DONE]"))
        elif behaviour == "stall":
            await send(sse(chunk(REPLY[0])))
            await reader.read()
            self.disconnected.set()
            return
        elif behaviour == "break":
            await send(sse(chunk(REPLY[0])) + sse(chunk(REPLY[1])))
            writer.transport.abort()  # gone without the closing chunk
            return
        elif behaviour == "malformed":
            await send(sse(chunk(REPLY[0])) + b'data: {"choices": [{"delta\n\n')
        elif behaviour == "bad_shape":
            await send(sse(chunk(REPLY[0])) + sse({"choices": [{"delta": {"content": 5}}]}))
        elif behaviour == "no_finish":
            await send(sse(chunk(REPLY[0])) + sse("[DONE]"))
        elif behaviour == "error_event":
            await send(sse(chunk(REPLY[0])) + sse({"error": {"message": "CUDA out of memory"}}, event="error"))
        else:
            raise ValueError(behaviour)
        await send(b"")  # the closing chunk
