"""Fish Audio's live WebSocket, /v1/tts/live: text in as it is written, audio out as it is generated.

Protocol (msgpack binary messages, as `fish-audio-sdk`'s `stream_websocket` speaks it; JSON text
messages are read too):

    client → {"event": "start", "request": TTSRequest}   first, once: voice, format, prosody...
    client → {"event": "text", "text": "Hel"}            any number of pieces, any size
    client → {"event": "flush"}                          speak the text so far, even mid-sentence
    client → {"event": "stop"} (or "close")              no more text: speak the rest, then finish
    server → {"event": "audio", "audio": <bytes>, "index": n, "text": "..."}
    server → {"event": "finish", "reason": "stop" | "error", "message": "..."}

Text pieces are cut into sentences incrementally (SentenceStream): a sentence is spoken as soon as
the next one starts, or on flush/stop. One synthesis runs for the whole session, pulling sentences
as they become ready, so every sentence is conditioned on the previous one (one voice throughout).
All audio events together form one file in the requested format. `index` and `text` (the
sentence, on its first audio event) are ours; the SDK ignores them. The socket closing stops the
generation at once (between two decoding steps).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing, suppress
from typing import Any

import ormsgpack
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from fish_worker.errors import JobInputError
from fish_worker.server.auth import require_api_key
from fish_worker.server.errors import ApiError
from fish_worker.server.fish_models import FishTTSRequest
from fish_worker.server.fish_routes import validation_error
from fish_worker.server.fish_synthesis import FishSpeechPlan, plan_speech
from fish_worker.service import TTSService
from fish_worker.text.sentence_stream import SentenceStream
from fish_worker.threaded import iterate_in_thread

log = logging.getLogger(__name__)

router = APIRouter(tags=["Fish Audio-compatible"])

_END = object()  # no more sentences: the session's text has ended
_POLL_S = 0.05  # how often the synthesis thread, waiting for text, looks whether the session is over


class SessionError(Exception):
    """Ends the session with finish(reason="error") and this message."""


@router.websocket("/v1/tts/live")
async def live(websocket: WebSocket) -> None:
    if not await _authorized(websocket):
        return
    await websocket.accept()
    await LiveSession(websocket, websocket.app.state.runner.service).run()


async def _authorized(websocket: WebSocket) -> bool:
    """The HTTP doors' bearer-key check, on the upgrade request; refused: 401 before the handshake."""
    scheme, token = get_authorization_scheme_param(websocket.headers.get("authorization"))
    credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme.lower() == "bearer" else None
    try:
        require_api_key(websocket, credentials)  # type: ignore[arg-type]  # it reads only .app
    except ApiError as exc:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse({"message": exc.message}, status_code=exc.status))
        else:
            await websocket.close(code=1008, reason=exc.message)
        return False
    return True


class LiveSession:
    def __init__(self, websocket: WebSocket, service: TTSService) -> None:
        self.websocket = websocket
        self.service = service
        self.sentences: queue.Queue = queue.Queue()  # read by the synthesis thread
        self.started = time.perf_counter()

    async def run(self) -> None:
        try:
            plan = await self._start()
            receiver = asyncio.create_task(self._receive(plan.request.chunk_length, plan.request.text))
            speaker = asyncio.create_task(self._speak(plan))
            done, _ = await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_COMPLETED)
            if speaker not in done:  # the client left or broke the protocol: stop generating now
                speaker.cancel()
                with suppress(asyncio.CancelledError):
                    await speaker
                receiver.result()  # a protocol error ends the session as an error
                return
            receiver.cancel()
            with suppress(asyncio.CancelledError, WebSocketDisconnect):
                await receiver
            speaker.result()
            await self._send({"event": "finish", "reason": "stop"})
        except WebSocketDisconnect:
            return
        except (SessionError, JobInputError) as exc:
            await self._finish_with_error(str(exc))
        except Exception as exc:  # a fault of ours: log it, tell the client briefly
            log.exception("live session failed")
            await self._finish_with_error(f"internal error: {type(exc).__name__}")
        finally:
            self.sentences.put(_END)  # a synthesis thread still waiting for text ends
        with suppress(RuntimeError, WebSocketDisconnect):
            await self.websocket.close()

    async def _start(self) -> FishSpeechPlan:
        event = await self._next_event()
        if event.get("event") != "start":
            raise SessionError(f"event: the first event must be 'start', got {str(event.get('event'))[:100]!r}")
        try:
            request = FishTTSRequest.model_validate(event.get("request") or {})
        except ValidationError as exc:
            raise SessionError("request." + validation_error(exc).message) from None
        return await asyncio.to_thread(plan_speech, request, self.service)

    async def _receive(self, chunk_length: int, start_text: str) -> None:
        """Turn text events into sentences until the client goes away."""
        stream = SentenceStream(chunk_length)
        self._queue(stream.push(start_text))  # the start request may carry the first text
        stopped = False
        while True:
            event = await self._next_event()  # WebSocketDisconnect ends the session
            kind = event.get("event")
            if stopped:
                continue  # after stop only a close is awaited
            if kind == "text":
                text = event.get("text")
                if not isinstance(text, str):
                    raise SessionError("text: must be a string")
                self._queue(stream.push(text))
                stream = self._bounded(stream, chunk_length)
            elif kind == "flush":
                self._queue(stream.finish())
                stream = SentenceStream(chunk_length)
            elif kind in ("stop", "close"):
                self._queue(stream.finish())
                self.sentences.put(_END)
                stopped = True
            else:
                log.info("live session: ignored event %r", str(kind)[:100])

    def _queue(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self.sentences.put(sentence)

    def _bounded(self, stream: SentenceStream, chunk_length: int) -> SentenceStream:
        # SentenceStream keeps (and re-splits) all its text; restart it from the unfinished sentence
        # once it has grown, so a long session costs the same per piece as a short one.
        if len(stream.text) < 4 * self.service.settings.max_text_chars:
            return stream
        *complete, unfinished = stream.finish() or [""]
        self._queue(complete)
        fresh = SentenceStream(chunk_length)
        fresh.push(unfinished + (" " if stream.text[-1:].isspace() else ""))
        return fresh

    async def _speak(self, plan: FishSpeechPlan) -> None:
        """One synthesis for the whole session, sending each chunk's audio as it comes."""
        encoder = plan.encoder(self.service.sample_rate)
        synthesis = iterate_in_thread(lambda stop: plan.synthesize(self.service, self._pull(stop), stop))
        async with aclosing(synthesis) as chunks:  # closing sets the thread's stop event
            async for chunk in chunks:
                audio = await asyncio.to_thread(encoder.feed_chunk, chunk)
                event: dict[str, Any] = {"event": "audio", "audio": audio, "index": chunk.index,
                                         "time": round(time.perf_counter() - self.started, 3)}
                if chunk.text:
                    event["text"] = chunk.text
                await self._send(event)
        if tail := await asyncio.to_thread(encoder.close):
            await self._send({"event": "audio", "audio": tail, "index": -1})

    def _pull(self, stop: threading.Event) -> Iterator[str]:
        """Sentences for the synthesis thread, each as soon as it is ready."""
        while not stop.is_set():
            try:
                item = self.sentences.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    async def _next_event(self) -> dict[str, Any]:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        try:
            if message.get("bytes") is not None:
                event = ormsgpack.unpackb(message["bytes"])
            else:
                event = json.loads(message.get("text") or "")
        except (ormsgpack.MsgpackDecodeError, ValueError):
            raise SessionError("event: is not valid msgpack (or JSON)") from None
        if not isinstance(event, dict):
            raise SessionError("event: must be an object with an 'event' field")
        return event

    async def _send(self, event: dict[str, Any]) -> None:
        await self.websocket.send_bytes(ormsgpack.packb(event))

    async def _finish_with_error(self, message: str) -> None:
        log.info("live session ended with an error: %s", message)
        if self.websocket.client_state == WebSocketState.CONNECTED:
            with suppress(RuntimeError, WebSocketDisconnect):
                await self._send({"event": "finish", "reason": "error", "message": message})
