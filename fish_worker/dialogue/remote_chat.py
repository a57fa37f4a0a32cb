"""A chat backend that asks a remote engine: the OpenAI chat-completions API, streamed (`stream: true`).

    chat = RemoteChatBackend("https://api.runpod.ai/v2/<ENDPOINT_ID>/openai/v1", api_key=KEY, model="Qwen/...")
    for delta in chat.stream_reply(history, temperature=0.7, max_new_tokens=200, system_prompt=None, seed=1):
        ...

Any OpenAI-compatible engine serves it: vLLM, SGLang, RunPod's vLLM worker, Ollama, `transformers serve`.
The history and system prompt go as structured messages, temperature, max_tokens and seed as request
parameters; the engine applies its own chat template (docs/chat.md says what that means for control
tokens in message text). No weights are loaded here.

Every request runs on one private event loop thread with the official async client (its connection pool
shared by all replies), so stopping a reply from any thread cancels its task, which closes the HTTP
stream at once, even while the engine is silent. Each failure (unreachable, 401, 429, timeouts, a stream
that breaks off, a malformed chunk) ends the reply with a ChatBackendError saying which.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, ValidationError

from fish_worker.dialogue.backend import ChatBackendError
from fish_worker.dialogue.prompt import arrange_messages
from fish_worker.engine.sampling_rules import TEMPERATURE
from fish_worker.errors import ErrorKind, bounded, first_problem
from fish_worker.settings import ChatSettings

log = logging.getLogger(__name__)

ENGINE_TEXT_CHARS = 150  # most characters of an engine's own error text repeated in a job error


class RemoteChatBackend:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_retries: int = 1,
    ):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._model = model
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chat-backend", daemon=True)
        self._thread.start()
        # Every argument given, so the client reads no OPENAI_* variable. An engine without auth ignores
        # the placeholder key (the client always sends one).
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "none",
            max_retries=max_retries,
            timeout=openai.Timeout(read_timeout_s, connect=connect_timeout_s),
        )
        self._model_lock = asyncio.Lock()

    @property
    def shown_url(self) -> str:
        """The engine's URL as logs and job errors show it: no user:password, query or fragment."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))

    @classmethod
    def from_settings(cls, settings: ChatSettings) -> RemoteChatBackend:
        if settings.base_url is None:
            raise ValueError("no FISH_CHAT_BASE_URL: the remote chat backend needs one")
        return cls(
            settings.base_url,
            api_key=settings.api_key,
            model=settings.model,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_retries=settings.max_retries,
        )

    @property
    def description(self) -> str:
        model = repr(self._model) if self._model else "the first one it lists (asked at the first reply)"
        return f"remote OpenAI-compatible engine at {self.shown_url}, model {model}; no chat weights loaded here"

    def stream_reply(
        self,
        messages: list[dict],
        *,
        temperature: float = TEMPERATURE,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        seed: int | None = None,
    ) -> RemoteReply:
        """The engine's reply to `messages`, as deltas (see backend.py for the contract).

        The engine sees the whole history given: fitting it to the model's context is the engine's
        (an engine refusing an over-long prompt fails the reply with its own message).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        system, turns = arrange_messages(messages, system_prompt)
        params: dict[str, Any] = {"messages": system + turns, "temperature": temperature, "max_tokens": max_new_tokens}
        if seed is not None:
            params["seed"] = seed

        async def write(push: Callable[[str], None]) -> None:
            progress = _Progress()
            try:
                await self._stream(params, push, progress)
            except ChatBackendError:
                raise
            except (openai.OpenAIError, ValidationError, ValueError, TypeError, AttributeError) as exc:
                raise self._explained(exc, progress) from exc

        return RemoteReply(self._loop, write)

    def close(self) -> None:
        """Close the connection pool and stop the loop thread (replies still open fail)."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stream(self, params: dict[str, Any], push: Callable[[str], None], progress: _Progress) -> None:
        model = await self._model_name()
        stream = await self._client.chat.completions.create(model=model, stream=True, **params)
        progress.answered = True
        try:
            async for chunk in stream:
                delta, finish_reason = _read_chunk(chunk)
                if delta:
                    progress.wrote = True
                    push(delta)
                if finish_reason is not None:
                    return  # the reply is whole; what may follow (a usage chunk, [DONE]) is not needed
        finally:
            await stream.close()
        raise ChatBackendError(
            f"chat backend unavailable: the stream from {self.shown_url} ended before the reply "
            "did (no finish_reason): the engine stopped mid-reply"
        )

    async def _model_name(self) -> str:
        """FISH_CHAT_MODEL, else the first model the engine lists (asked once)."""
        async with self._model_lock:
            if self._model is None:
                page = await self._client.models.list()
                names = [entry.id for entry in page.data]
                if not names:
                    raise ChatBackendError(
                        f"chat backend unavailable: {self.shown_url}/models lists no model; set FISH_CHAT_MODEL"
                    )
                self._model = names[0]
                log.info("chat backend: using model %r, the first one %s lists", self._model, self.shown_url)
            return self._model

    def _explained(self, exc: Exception, progress: _Progress) -> ChatBackendError:
        """`exc` as the job error: what failed, in words an operator can act on."""
        url = self.shown_url
        engine_says = bounded(_engine_message(exc), ENGINE_TEXT_CHARS)
        when = "mid-reply" if progress.wrote else "before the reply"
        if isinstance(exc, openai.APITimeoutError):
            if "connect" in type(exc.__cause__).__name__.lower():
                return ChatBackendError(
                    f"chat backend unavailable: cannot connect to {url} within "
                    f"{self.connect_timeout_s:g} s (FISH_CHAT_CONNECT_TIMEOUT_S)"
                )
            return ChatBackendError(
                f"chat backend unavailable: {url} sent nothing for {self.read_timeout_s:g} s "
                f"{when} (FISH_CHAT_READ_TIMEOUT_S)"
            )
        if isinstance(exc, openai.APIConnectionError):
            if progress.answered:
                return ChatBackendError(
                    f"chat backend unavailable: the stream from {url} broke off {when} ({_cause(exc)})"
                )
            return ChatBackendError(f"chat backend unavailable: cannot reach {url} ({_cause(exc)})")
        if isinstance(exc, openai.RateLimitError):
            return ChatBackendError(
                f"chat backend busy: {url} is rate limiting requests (429: {engine_says}); try again later",
                kind=ErrorKind.BUSY,
            )
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return ChatBackendError(
                f"chat backend unavailable: {url} refused the API key ({exc.status_code}: "
                f"{engine_says}); check FISH_CHAT_API_KEY"
            )
        if isinstance(exc, openai.NotFoundError):
            return ChatBackendError(
                f"chat backend unavailable: {url} answered 404 ({engine_says}); check "
                "FISH_CHAT_BASE_URL (it ends in /v1) and FISH_CHAT_MODEL"
            )
        if isinstance(exc, openai.APIStatusError):
            return ChatBackendError(f"chat backend unavailable: {url} answered {exc.status_code} ({engine_says})")
        if isinstance(exc, openai.APIError):  # an error event in the stream
            return ChatBackendError(f"chat backend unavailable: {url} reported an error mid-reply ({engine_says})")
        if isinstance(exc, openai.OpenAIError):
            return ChatBackendError(f"chat backend unavailable: {url}: {engine_says}")
        return ChatBackendError(
            f"chat backend unavailable: {url} sent a malformed stream chunk ({type(exc).__name__}: {engine_says})"
        )


class _Delta(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(BaseModel):
    """What a reply needs from a stream chunk, checked (the client builds chunks unchecked); the rest
    (id, model, usage, logprobs ...) is not read, so engines that leave it out still work."""

    choices: list[_Choice] = []


def _read_chunk(chunk: ChatCompletionChunk) -> tuple[str, str | None]:
    """(text, finish_reason) of a stream chunk; raises ValidationError for one of the wrong shape."""
    checked = _Chunk.model_validate(chunk.to_dict(warnings=False))
    if not checked.choices:
        return "", None  # e.g. a usage-only chunk
    choice = checked.choices[0]  # one choice asked for (n = 1)
    return (choice.delta.content or "") if choice.delta else "", choice.finish_reason


def _engine_message(exc: Exception) -> str:
    """The engine's own words for an error answer, else the exception's."""
    if isinstance(exc, openai.APIError):
        body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
        return exc.message
    if isinstance(exc, ValidationError) and exc.errors():
        field, problem, _ = first_problem(exc)
        return f"{field}: {problem}"
    return str(exc)


def _cause(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


@dataclass
class _Progress:
    """How far a reply got, which says what a failure means: no answer, or a stream cut short."""

    answered: bool = False  # the engine accepted the request and the stream began
    wrote: bool = False  # some of the reply's text arrived


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


class RemoteReply:
    """One reply's deltas as a plain iterator, fed by its task on the backend's event loop.

    `close()` and `abort()` (the same, callable from any thread) cancel the task, which closes the HTTP
    stream, and wake a consumer waiting in `next()`. The task always ends (every wait on the engine has a
    timeout), so `next()` never blocks for good.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[Callable[[str], None]], Awaitable[None]]):
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False
        self._task: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(self._run(write), loop)

    async def _run(self, write: Callable[[Callable[[str], None]], Awaitable[None]]) -> None:
        try:
            await write(self._items.put)
        except Exception as exc:
            self._items.put(_Failed(exc))
        finally:  # also when cancelled
            self._items.put(_END)

    def __iter__(self) -> RemoteReply:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        item = self._items.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._done = True
        self._task.cancel()
        self._items.put(_END)

    abort = close
