"""Speak a chat reply while the chat model is still writing it.

Two helper threads feed one ordered event stream (`async_bridge.merge_threads`). The writer pulls
text deltas from the chat model and cuts them into sentences; the speaker synthesises each sentence as soon as the writer hands it
over. The caller gets every delta as it is written and each sentence's audio as soon as it is
spoken, so the first sentence can play while the rest of the reply is still being generated.
A sentence's text always comes before its audio (it is queued only after its deltas).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fish_worker.async_bridge import Emit, merge_threads
from fish_worker.tts.requests import SpeechChunk
from fish_worker.text.sentence_stream import SentenceStream


@runtime_checkable
class Abortable(Protocol):
    """A reply stream that can be ended from any thread (dialogue/backend.py)."""

    def abort(self) -> None: ...


# How often the merger looks at the caller's stop flag while no event arrives.
STOP_POLL_S = 0.1

_NO_MORE = object()  # end of the sentence queue


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply as the chat model wrote it; the pieces concatenated are the reply."""

    text: str


# speak(sentences, halt) -> one SpeechChunk per sentence, pulling sentences lazily, ending early once halt is set.
Speaker = Callable[[Iterable[str], threading.Event], Iterator[SpeechChunk]]


def speak_while_writing(
    deltas: Iterator[str],
    speak: Speaker,
    *,
    max_sentence_chars: int,
    stop: threading.Event,
    language: str | None = None,
) -> Iterator[TextDelta | SpeechChunk]:
    """Yield the reply's deltas and its sentences' audio, in the order they become ready.

    `stop` set by the caller (job cancelled) ends both helpers; so does an error in either one,
    which is re-raised here. `deltas.close()`, if it has one, is called when the writer ends.
    `deltas.abort()`, if it has one (a remote reply, callable from any thread), is called as soon as
    the reply is stopped, so a writer waiting on a silent engine is woken instead of waiting it out.
    """
    sentences: queue.Queue = queue.Queue()
    written = threading.Event()

    def write(emit: Emit, halt: threading.Event) -> None:
        cutter = SentenceStream(max_sentence_chars, language)
        try:
            for delta in deltas:
                emit(TextDelta(delta))
                for sentence in cutter.push(delta):
                    sentences.put(sentence)
                if halt.is_set():
                    return
            for sentence in cutter.finish():
                sentences.put(sentence)
        finally:
            written.set()
            if hasattr(deltas, "close"):
                deltas.close()  # stops the model's generation if the reply was abandoned
            sentences.put(_NO_MORE)

    def say(emit: Emit, halt: threading.Event) -> None:
        for chunk in speak(iter(sentences.get, _NO_MORE), halt):
            emit(chunk)

    def guard(emit: Emit, halt: threading.Event) -> None:
        while not written.is_set():
            if halt.wait(STOP_POLL_S):
                if isinstance(deltas, Abortable):  # always: guard runs only for such a stream (below)
                    deltas.abort()
                return

    # halt (the bridge's stop) is set when the caller stops, or this reply is over (done or failed).
    producers = (write, say, guard) if isinstance(deltas, Abortable) else (write, say)
    return merge_threads(*producers, stop=stop, name="reply", poll_s=STOP_POLL_S)
