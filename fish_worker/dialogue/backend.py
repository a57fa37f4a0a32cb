"""What writes a chat reply: one interface, a local model (llm.py) or a remote engine (remote_chat.py).

    chat = make_chat_backend(settings.chat, device="cuda")    # make_backend.py; None: no chat configured
    log.info("chat: %s", chat.description)
    for delta in chat.stream_reply(history, temperature=0.7, max_new_tokens=200, system_prompt=None, seed=1):
        ...

The contract every backend keeps, so turns.py and spoken_reply.py never ask which one they have:
- `stream_reply` may be called from several threads at once. The local ChatModel decodes concurrent
  replies together (chat_batching.py); the remote engine gets one request per reply.
- Bad arguments (a message list not ending with the user's turn, temperature < 0, max_new_tokens < 1)
  raise ValueError up front; a prompt that cannot fit the model raises PromptTooLongError up front.
- The engine failing, before or during the reply, raises ChatBackendError from the iterator.
- `close()` on the returned iterator (from the thread consuming it) ends the reply and frees what it
  holds (generation, HTTP stream). An iterator may also have `abort()`, callable from any thread, which
  wakes a consumer blocked waiting for the next delta: spoken_reply.py calls it when a turn is stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from fish_worker.engine.sampling_rules import TEMPERATURE
from fish_worker.errors import ErrorKind, WorkerError


class ChatBackendError(WorkerError, RuntimeError):
    """The chat backend failed (unreachable, refused, broke off, wrote nonsense): UNAVAILABLE, or BUSY
    when the engine says it is rate limited. The message starts "chat backend ...", like the
    conversation store's "conversation store unavailable: ...": the job names what failed."""

    kind = ErrorKind.UNAVAILABLE


@runtime_checkable
class ChatBackend(Protocol):
    @property
    def description(self) -> str:
        """What writes the replies, for the start-up log: "local model /models/x on cuda:0", "remote ..."."""

    def stream_reply(
        self,
        messages: list[dict],
        *,
        temperature: float = TEMPERATURE,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Reply to `messages` (ending with the user turn); yields text deltas as they are written."""
