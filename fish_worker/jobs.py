"""One RunPod job: validate the input, synthesise, shape the output chunks, report errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fish_worker.audio.formats import ResultTooLargeError
from fish_worker.conversation_service import CONVERSATION_ACTIONS, ConversationService, is_conversation_action
from fish_worker.conversations import ConversationStoreError, make_conversation_store
from fish_worker.errors import JobInputError
from fish_worker.job_output import StreamedOutput, whole_output, within_result_limit
from fish_worker.output_adjustments import adjusted_speech, job_adjustments
from fish_worker.schemas import parse_job_input
from fish_worker.service import SpeechChunk, TTSService
from fish_worker.spoken_reply import TextDelta
from fish_worker.threaded import iterate_in_thread
from fish_worker.voice_actions import VOICE_ACTIONS, is_voice_action, run_voice_action

log = logging.getLogger(__name__)


# Which RunPod result limit a whole result must fit ("run", "runsync"); None: none (self-hosted).
RESULT_ROUTE_KEY = "result_route"


def chunk_output(chunks: list[SpeechChunk], audio_format: str = "float") -> dict[str, Any]:
    return whole_output(chunks, audio_format)


class JobRunner:
    def __init__(self, service: TTSService, conversations: ConversationService | None = None):
        self.service = service
        # Default: no chat model, conversations kept in this process (what a worker without settings gets).
        self.conversations = conversations or ConversationService(service, make_conversation_store(
            None, service.settings.conversation_ttl_s, service.settings.max_conversations))

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield output chunks; a yielded {"error": "..."} marks the job FAILED (the worker goes on)."""
        job_id = job.get("id", "?")
        started = time.perf_counter()
        try:
            if is_voice_action(job.get("input")):
                yield await run_voice_action(job["input"], self.service)
                return
            if is_conversation_action(job.get("input")):
                yield await asyncio.to_thread(self.conversations.end, job["input"])
                return
            if isinstance(job.get("input"), dict) and "action" in job["input"]:
                raise JobInputError("action", f"unknown action {job['input']['action']!r}; one of: "
                                    + ", ".join(VOICE_ACTIONS + CONVERSATION_ACTIONS))
            request = parse_job_input(job.get("input"))
            mode = self.conversations.mode(request)
            if mode == "chat" or request.conversation_id:
                speech = lambda stop: self.conversations.turn(request, mode, stop)  # noqa: E731
            else:
                speech = lambda stop: self.service.synthesize(request, stop)  # noqa: E731
            adjustments = job_adjustments(request)  # sample_rate, speed, volume
            speech = lambda stop, make=speech: adjusted_speech(make(stop), adjustments)  # noqa: E731
            if request.stream:
                streamed = StreamedOutput(request.audio_format)
                async for chunk in iterate_in_thread(speech):
                    if isinstance(chunk, TextDelta):  # chat mode: the reply as it is written
                        yield {"text_delta": chunk.text}
                        continue
                    for piece in streamed.chunks(chunk):
                        yield piece
                for piece in streamed.finish():
                    yield piece
            else:
                events = [e async for e in iterate_in_thread(speech)]
                chunks = [e for e in events if isinstance(e, SpeechChunk)]
                if not chunks and mode == "tts":
                    yield {"error": "message: no audio was generated for this text"}
                    return
                output = chunk_output(chunks, request.audio_format)
                if mode == "chat":  # the whole reply, as written (sentence texts lose its line breaks)
                    output["text"] = "".join(e.text for e in events if isinstance(e, TextDelta))
                yield await asyncio.to_thread(
                    within_result_limit, output, self.service.settings, job.get(RESULT_ROUTE_KEY, "run"))
            log.info("job %s done in %.2f s", job_id, time.perf_counter() - started)
        except (JobInputError, ResultTooLargeError) as exc:
            log.info("job %s rejected: %s", job_id, exc)
            yield {"error": str(exc)}
        except ConversationStoreError as exc:  # "conversation store unavailable: ...": fail, never forget
            log.error("job %s failed: %s", job_id, exc)
            yield {"error": str(exc)}
        except Exception as exc:  # a fault of ours: log the traceback, tell the caller briefly
            log.exception("job %s failed", job_id)
            yield {"error": f"internal error: {type(exc).__name__}: {exc}"}
