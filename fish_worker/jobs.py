"""One RunPod job: validate the input, synthesise, shape the output chunks, report errors."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from fish_worker.audio.output import to_float_list
from fish_worker.errors import JobInputError
from fish_worker.schemas import parse_job_input
from fish_worker.service import SpeechChunk, TTSService
from fish_worker.threaded import iterate_in_thread

log = logging.getLogger(__name__)


def chunk_output(chunks: list[SpeechChunk]) -> dict[str, Any]:
    audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, dtype=np.float32)
    sample_rate = chunks[0].sample_rate if chunks else 44100
    out = {
        "text": " ".join(c.text for c in chunks),
        "audio": to_float_list(audio),
        "sample_rate": sample_rate,
        "duration_s": round(len(audio) / sample_rate, 3),
    }
    if chunks:
        out["seed"] = chunks[0].seed
    return out


class JobRunner:
    def __init__(self, service: TTSService):
        self.service = service

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield output chunks; a yielded {"error": "..."} marks the job FAILED (the worker goes on)."""
        job_id = job.get("id", "?")
        started = time.perf_counter()
        try:
            request = parse_job_input(job.get("input"))
            if request.stream:
                async for chunk in iterate_in_thread(lambda stop: self.service.synthesize(request, stop)):
                    yield {**chunk_output([chunk]), "index": chunk.index}
            else:
                chunks = [c async for c in iterate_in_thread(lambda stop: self.service.synthesize(request, stop))]
                if not chunks:
                    yield {"error": "message: no audio was generated for this text"}
                    return
                yield chunk_output(chunks)
            log.info("job %s done in %.2f s", job_id, time.perf_counter() - started)
        except JobInputError as exc:
            log.info("job %s rejected: %s", job_id, exc)
            yield {"error": str(exc)}
        except Exception as exc:  # a fault of ours: log the traceback, tell the caller briefly
            log.exception("job %s failed", job_id)
            yield {"error": f"internal error: {type(exc).__name__}: {exc}"}
