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

After a session's `finish` (reason "stop") the connection stays open for the next session's `start`,
as Fish's own server does: LiveKit's plugin pools one socket and runs each turn's session on it.
A connection waits at most FISH_LIVE_MAX_SESSION_S for that `start`, then closes (code 1000).

The key is checked by AuthMiddleware on the upgrade request; the connection is then one admitted job of
the caller's tenant (limiter.py; over the bound: 429 before the handshake) for as long as it lasts,
sessions and the waits between them, and uses that tenant's saved voices. A session ends with an error
when nothing went either way for FISH_LIVE_IDLE_TIMEOUT_S (long by default: pipecat keeps one session
open for a whole conversation, silent while the user speaks), when it has lasted FISH_LIVE_MAX_SESSION_S,
or when its text passes FISH_LIVE_MAX_TEXT_CHARS.
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
from pydantic import ValidationError
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketState

from fish_worker.errors import JobInputError, WorkerError, input_error
from fish_worker.jobs.inputs import check_encodable
from fish_worker.server.auth import tenant_of
from fish_worker.settings import Settings
from fish_worker.server.errors import ApiError, deny_websocket
from fish_worker.server.fish_models import FishTTSRequest
from fish_worker.server.fish_synthesis import FishSpeechPlan, plan_speech
from fish_worker.server.dependencies import AppSettings, Limiter, Speech
from fish_worker.tts.service import TTSService
from fish_worker.text.sentence_stream import SentenceStream
from fish_worker.async_bridge import iterate_in_thread
from fish_worker.tts.voices import VoiceStore

log = logging.getLogger(__name__)

router = APIRouter(tags=["Fish Audio-compatible"])

_END = object()  # no more sentences: the session's text has ended
_POLL_S = 0.05  # how often the synthesis thread, waiting for text, looks whether the session is over


class SessionError(Exception):
    """Ends the session with finish(reason="error") and this message."""


@router.websocket("/v1/tts/live")
async def live(websocket: WebSocket, limiter: Limiter, tts: Speech, settings: AppSettings) -> None:
    try:
        tenant = tenant_of(websocket)  # the key was checked by AuthMiddleware, before the handshake
        admission = limiter.admit(tenant)  # a session is one job for as long as it lasts
    except ApiError as exc:  # refused before the handshake, in the Fish door's shape (429 + Retry-After)
        await deny_websocket(
            websocket.scope, websocket.receive, websocket.send, exc.status, exc.message, headers=exc.headers
        )
        return
    voices = tts.voices.store.for_tenant(tenant)
    try:
        await websocket.accept()
        first_message = None  # the first session reads its own `start`, under the idle timeout
        while await LiveSession(websocket, tts, voices, settings, first_message).run():
            first_message = await _next_message(websocket, settings.server.live_max_session_s)
            if first_message is None:  # the client left, or kept the connection unused too long
                break
    finally:
        admission.release()
        if websocket.client_state == WebSocketState.CONNECTED:  # not after the client's own close
            with suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()


class LiveSession:
    def __init__(
        self,
        websocket: WebSocket,
        service: TTSService,
        voices: VoiceStore,
        settings: Settings,
        first_message: Message | None = None,
    ) -> None:
        self.websocket = websocket
        self.first_message = first_message  # already received (a later session's `start`): read first
        self.service = service
        self.voices = voices  # the caller's tenant's: where reference_id is looked up
        self.speech_settings = settings  # the text limits every door applies
        self.settings = settings.server  # the live socket's own limits
        self.sentences: queue.Queue = queue.Queue()  # read by the synthesis thread
        self.started = time.perf_counter()
        self.last_activity = time.monotonic()  # an event received or audio sent
        self.text_chars = 0

    async def run(self) -> bool:
        """The session, to its `finish`; True when it ended well and the connection may carry another."""
        receiver = speaker = None

        async def stop_tasks() -> None:  # still running after a timeout or a fault: the generation stops now
            for task in (speaker, receiver):
                if task is not None and not task.done():
                    await _cancelled(task)

        deadline = asyncio.timeout(self.settings.live_max_session_s)
        try:
            async with deadline:
                plan = await self._start()
                receiver = asyncio.create_task(self._receive(plan.request.chunk_length, plan.request.text))
                speaker = asyncio.create_task(self._speak(plan))
                done, _ = await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_COMPLETED)
                if speaker not in done:  # the client left or broke the protocol: stop generating now
                    await _cancelled(speaker)
                    receiver.result()  # a protocol error ends the session as an error
                    return False
                await _cancelled(receiver)
                speaker.result()
            await self._send({"event": "finish", "reason": "stop"})
            return True
        except WebSocketDisconnect:
            return False
        except (SessionError, WorkerError) as exc:  # bad input, a voice not found, ...: said, then closed
            await self._finish_with_error(str(exc))
        except TimeoutError:
            await stop_tasks()  # no audio after the finish event
            if not deadline.expired():
                log.exception("live session failed")
                await self._finish_with_error("internal error: TimeoutError")
            else:
                await self._finish_with_error(
                    f"session: lasted {self.settings.live_max_session_s:g} s, the limit (FISH_LIVE_MAX_SESSION_S)"
                )
        except Exception as exc:  # a fault of ours: log it, tell the client briefly
            log.exception("live session failed")
            await stop_tasks()
            await self._finish_with_error(f"internal error: {type(exc).__name__}")
        finally:
            self.sentences.put(_END)  # a synthesis thread still waiting for text ends
            await stop_tasks()
        return False

    async def _start(self) -> FishSpeechPlan:
        event = await self._client_event()
        if event.get("event") != "start":
            raise SessionError(f"event: the first event must be 'start', got {str(event.get('event'))[:100]!r}")
        # The TTSRequest's fields are named as /v1/tts names them ("text: ...", "references[0].audio: ..."),
        # so a bad value gets the same message on both Fish doors; the event's own fields by their names.
        body = event.get("request") or {}
        try:
            check_encodable({key: value for key, value in event.items() if key != "request"}, brackets=True)
            if isinstance(body, dict):  # another shape is refused below, without echoing it
                check_encodable(body, brackets=True)  # lone surrogates: "text: contains invalid unicode ..."
            request = FishTTSRequest.model_validate(body)
        except JobInputError as exc:
            raise SessionError(str(exc)) from None
        except ValidationError as exc:
            raise SessionError(input_error(exc, brackets=True, whole="request").message) from None
        self._count_text(request.text)
        return await asyncio.to_thread(plan_speech, request, self.service.voices, self.voices, self.speech_settings)

    async def _receive(self, chunk_length: int, start_text: str) -> None:
        """Turn text events into sentences until the client goes away."""
        stream = SentenceStream(chunk_length)
        self._queue(stream.push(start_text))  # the start request may carry the first text
        stopped = False
        while True:
            # WebSocketDisconnect ends the session; after stop the client only waits for the audio.
            event = await (self._next_event() if stopped else self._client_event())
            kind = event.get("event")
            if stopped:
                continue  # after stop only a close is awaited
            if kind == "text":
                text = event.get("text")
                if not isinstance(text, str):
                    raise SessionError("text: must be a string")
                try:
                    check_encodable({"text": text})  # a lone surrogate could never be sent back
                except JobInputError as exc:
                    raise SessionError(str(exc)) from None
                self._count_text(text)
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

    def _count_text(self, text: str) -> None:
        self.text_chars += len(text)
        if self.text_chars > self.settings.live_max_text_chars:
            raise SessionError(
                f"text: the session's text passed {self.settings.live_max_text_chars} characters, "
                "the limit (FISH_LIVE_MAX_TEXT_CHARS)"
            )

    async def _client_event(self) -> dict[str, Any]:
        """The client's next event; SessionError once nothing has gone either way for the idle timeout."""
        idle_s = self.settings.live_idle_timeout_s
        pending = asyncio.ensure_future(self._next_event())
        try:
            while True:
                left = self.last_activity + idle_s - time.monotonic()
                if left <= 0:
                    raise SessionError(
                        f"idle: nothing was sent or received for {idle_s:g} s (FISH_LIVE_IDLE_TIMEOUT_S)"
                    )
                done, _ = await asyncio.wait({pending}, timeout=left)  # audio sent meanwhile moves the deadline
                if done:
                    return pending.result()
        finally:
            if not pending.done():
                pending.cancel()

    def _queue(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self.sentences.put(sentence)

    def _bounded(self, stream: SentenceStream, chunk_length: int) -> SentenceStream:
        # SentenceStream keeps (and re-splits) all its text; restart it from the unfinished sentence
        # once it has grown, so a long session costs the same per piece as a short one.
        if len(stream.text) < 4 * self.speech_settings.max_text_chars:
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
                event: dict[str, Any] = {
                    "event": "audio",
                    "audio": audio,
                    "index": chunk.index,
                    "time": round(time.perf_counter() - self.started, 3),
                }
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
        message, self.first_message = self.first_message or await self.websocket.receive(), None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        self.last_activity = time.monotonic()
        try:
            if message.get("bytes") is not None:
                event = ormsgpack.unpackb(message["bytes"])
            else:
                event = json.loads(message.get("text") or "")
        except RecursionError:  # json's; ormsgpack says ValueError at its own depth limit
            raise SessionError("event: is not valid JSON: nested too deep") from None
        except (ormsgpack.MsgpackDecodeError, ValueError):
            raise SessionError("event: is not valid msgpack (or JSON)") from None
        if not isinstance(event, dict):
            raise SessionError("event: must be an object with an 'event' field")
        return event

    async def _send(self, event: dict[str, Any]) -> None:
        await self.websocket.send_bytes(ormsgpack.packb(event))
        self.last_activity = time.monotonic()

    async def _finish_with_error(self, message: str) -> None:
        log.info("live session ended with an error: %s", message)
        if self.websocket.client_state == WebSocketState.CONNECTED:
            with suppress(RuntimeError, WebSocketDisconnect):
                await self._send({"event": "finish", "reason": "error", "message": message})


async def _next_message(websocket: WebSocket, wait_s: float) -> Message | None:
    """The client's next message between two sessions; None when it closed or sent none within wait_s."""
    try:
        async with asyncio.timeout(wait_s):
            message = await websocket.receive()
    except (TimeoutError, RuntimeError):  # RuntimeError: the socket is no longer connected
        return None
    return None if message["type"] == "websocket.disconnect" else message


async def _cancelled(task: asyncio.Task) -> None:
    """Cancel `task` and wait until it has ended (its generation stopped); how it ended is not asked."""
    task.cancel()
    await asyncio.wait({task})  # unlike `await task`, raises neither its error nor its cancellation
    if not task.cancelled():
        task.exception()  # taken, so asyncio does not log it as never retrieved
