"""One RunPod job: validate the input, synthesise, shape the output chunks, report errors.

A job (jobs/job.py) runs one of two ways: `stream(job)` yields its output chunks, and on failure a
last `JobFailure` (kind, field, message); `result(job)` is its one final result, with a failure as
`{"error": message}` (RunPod's contract). The RunPod adapter turns a streamed failure into RunPod's
`{"error": message}` chunk (jobs/runpod_adapter.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from typing import Any

from fish_worker.dialogue.turns import CONVERSATION_ACTIONS, ConversationService, is_conversation_action
from fish_worker.conversations import make_conversation_store
from fish_worker.errors import ErrorKind, JobFailure, JobInputError, WorkerError, bounded, shown
from fish_worker.jobs.outputs import (
    StreamedOutput,
    final_output,
    result_too_large_error,
    whole_output,
    within_result_limit,
)
from fish_worker.jobs.output_adjustments import adjusted_speech, job_adjustments
from fish_worker.jobs.json_safe import NotJsonSafe, check_json_safe
from fish_worker.jobs.inputs import JobInput, check_encodable, parse_job_input
from fish_worker.jobs.job import Job, ResultRoute
from fish_worker.tts.requests import SpeechChunk
from fish_worker.tts.service import NO_AUDIO_ERROR, TTSService
from fish_worker.dialogue.spoken_reply import TextDelta
from fish_worker.settings import Settings
from fish_worker.tenancy import validate_tenant
from fish_worker.text.sentences import split_sentences
from fish_worker.async_bridge import iterate_in_thread
from fish_worker.jobs.voice_actions import VOICE_ACTIONS, is_voice_action, run_voice_action
from fish_worker.jobs.transcription import (
    TRANSCRIBE_ACTION,
    is_transcribe_action,
    run_transcribe_action,
    transcribe,
)
from fish_worker.asr.transcriber import Transcriber

log = logging.getLogger(__name__)

# Actions that synthesise nothing and run no model: they need no generation slot, so they never wait
# behind other jobs' generations. save_voice is not one: it runs the codec's encoder (GPU memory and
# time like a generation's), so it takes a slot like a job.
SLOTLESS_ACTIONS = ("list_voices", "delete_voice", "end_conversation")


def needs_generation_slot(job_input: Any) -> bool:
    return not (isinstance(job_input, dict) and job_input.get("action") in SLOTLESS_ACTIONS)


class JobRunner:
    def __init__(
        self,
        service: TTSService,
        settings: Settings,
        conversations: ConversationService | None = None,
        transcriber: Transcriber | None = None,
    ):
        """`settings`: the limits jobs are checked against (the ones `service` was built from)."""
        self.service = service
        self.settings = settings
        # Speech in (a job's `audio`, the transcribe action): None when no recognizer is configured.
        self.transcriber = transcriber
        # Default: no chat model, conversations kept in this process.
        self.conversations = conversations or ConversationService(
            service,
            make_conversation_store(None, settings.storage.conversation_ttl_s, settings.storage.max_conversations),
            settings=settings,
        )

    async def result(self, job: Job) -> dict[str, Any]:
        """The job's one final result: the whole output, a streamed job's summary, or {"error": ...}."""
        chunks = []
        async with aclosing(self.stream(job)) as events:
            async for event in events:
                if isinstance(event, JobFailure):
                    return {"error": event.message}
                chunks.append(event)
        return final_output(chunks, job.streamed) or {"error": "internal error: the job produced no output"}

    def _check_result_fits(self, request: JobInput, route: ResultRoute | None) -> None:
        settings = self.settings
        sentences = split_sentences(request.text, settings.sentence_max_chars, request.language)
        frames_budget = request.max_tokens * len(sentences)
        error = result_too_large_error(request.text, frames_budget, request.audio_format, settings, route)
        if error is not None:
            raise error

    async def stream(self, job: Job) -> AsyncGenerator[dict[str, Any] | JobFailure, None]:
        """Yield output chunks; a failed job's last item is its JobFailure (nothing is raised).

        Every chunk is checked to be postable JSON first: one that is not ends the job with an error
        (runpod would fail to post it after the handler yielded it, and the job would get no result).
        """
        job_id = bounded(job.id, 100)
        started = time.perf_counter()
        chunks = self._chunks(job)
        try:
            async for chunk in chunks:
                try:
                    check_json_safe(chunk)
                except NotJsonSafe as exc:
                    log.error("job %s: result chunk cannot be posted: %s", job_id, bounded(str(exc)))
                    yield JobFailure(
                        ErrorKind.INTERNAL, bounded(f"internal error: a result chunk cannot be sent as JSON: {exc}")
                    )
                    return
                yield chunk
            log.info("job %s done in %.2f s", job_id, time.perf_counter() - started)
        except WorkerError as exc:
            if exc.kind in (
                ErrorKind.INTERNAL,
                ErrorKind.UNAVAILABLE,
            ):  # e.g. the conversation store: fail, never forget
                log.error("job %s failed: %s", job_id, bounded(str(exc)))
            else:
                log.info("job %s rejected: %s", job_id, bounded(str(exc)))
            yield JobFailure.of(exc)
        except Exception as exc:  # a fault of ours: log the traceback, tell the caller briefly
            log.exception("job %s failed", job_id)
            yield JobFailure(ErrorKind.INTERNAL, bounded(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            await chunks.aclose()

    async def _chunks(self, job: Job) -> AsyncGenerator[dict[str, Any], None]:
        """The job's output chunks; raises WorkerError (or, for a fault of ours, anything) when it fails."""
        if isinstance(job.input, dict):
            check_encodable(job.input)  # every door, every action: no lone surrogates anywhere
        # Whose voices and conversations these are (set by the self-hosted server; None on RunPod).
        conversations = self.conversations.for_tenant(validate_tenant(job.tenant))
        if is_voice_action(job.input):
            yield await run_voice_action(job.input, self.service.voices, conversations.voices)
            return
        if is_conversation_action(job.input):
            yield await asyncio.to_thread(conversations.end, job.input)
            return
        if is_transcribe_action(job.input):
            yield await run_transcribe_action(job.input, self.transcriber)
            return
        if isinstance(job.input, dict) and "action" in job.input:
            raise JobInputError(
                "action",
                f"unknown action {shown(job.input['action'])}; one of: "
                + ", ".join(VOICE_ACTIONS + CONVERSATION_ACTIONS + (TRANSCRIBE_ACTION,)),
            )
        request = parse_job_input(job.input, self.settings)
        mode = conversations.mode(request.mode, request.system_prompt)
        transcript: str | None = None
        if request.audio is not None:  # a voice message: its transcript is the message (and the user's turn)
            heard = await transcribe(self.transcriber, request.audio, request.language)
            request = request.with_transcript(heard.text, self.settings)
            transcript = heard.text
            if job.streamed:
                yield {"transcript": transcript}
        if mode == "tts" and not job.streamed:  # fail now, not after minutes of work
            self._check_result_fits(request, job.result_route)
        speech: Callable[[threading.Event], Iterator[TextDelta | SpeechChunk]]
        if mode == "chat" or request.conversation_id:
            turn = request.to_turn(mode, conversations.settings.chat.frames_per_sentence)
            speech = lambda stop: conversations.turn(turn, stop)  # noqa: E731
        else:
            synthesis = request.to_synthesis()
            speech = lambda stop: self.service.synthesize(synthesis, stop, voices=conversations.voices)  # noqa: E731
        adjustments = job_adjustments(request)  # sample_rate, speed, volume
        unadjusted = speech
        speech = lambda stop: adjusted_speech(unadjusted(stop), adjustments)  # noqa: E731
        if job.streamed:  # the input was validated: request.stream is the same flag
            streamed = StreamedOutput(request.audio_format)
            spoke = False
            async for chunk in iterate_in_thread(speech):
                if isinstance(chunk, TextDelta):  # chat mode: the reply as it is written
                    yield {"text_delta": chunk.text}
                    continue
                spoke = True
                for piece in streamed.chunks(chunk):
                    yield piece
            if not spoke and mode == "tts":
                raise WorkerError(NO_AUDIO_ERROR, kind=ErrorKind.BAD_INPUT)
            for piece in streamed.finish():
                yield piece
        else:
            events = [e async for e in iterate_in_thread(speech)]
            chunks = [e for e in events if isinstance(e, SpeechChunk)]
            if not chunks and mode == "tts":
                raise WorkerError(NO_AUDIO_ERROR, kind=ErrorKind.BAD_INPUT)
            output = whole_output(chunks, request.audio_format)
            if mode == "chat":  # the whole reply, as written (sentence texts lose its line breaks)
                output["text"] = "".join(e.text for e in events if isinstance(e, TextDelta))
            if transcript is not None:
                output["transcript"] = transcript
            yield await asyncio.to_thread(within_result_limit, output, self.settings, job.result_route)
