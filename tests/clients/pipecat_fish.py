"""Drive pipecat's FishAudioTTSService (pipecat-ai[fish], unmodified) against a server.

Run with the clients venv's python (scripts/setup_clients_env.sh). A minimal real pipeline,
[upstream catcher, FishAudioTTSService, downstream sink], speaks two turns (TTSSpeakFrame each) on the
service's one WebSocket (/v1/tts/live), as a voice agent does, then ends with EndFrame. Every argument
is the service's default except `api_key`, the WebSocket URL (pipecat hard-codes Fish's cloud URL in
the `_base_url` attribute and has no argument for it) and, with --voice, `Settings(voice=...)`.
Prints one JSON object:

    {"turns": [{"ok", "frames", "samples", "sample_rate", "bytes"}, ...], "errors": [...]}
"""

from __future__ import annotations

import argparse
import asyncio
import json

from pipecat.frames.frames import EndFrame, ErrorFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.fish.tts import FishAudioTTSService
from pipecat.workers.runner import WorkerRunner

TURN_TIMEOUT_S = 90


class Recorder(FrameProcessor):
    """Passes every frame on; records audio going down and errors going up."""

    def __init__(self, direction: FrameDirection, record):
        super().__init__()
        self.direction = direction
        self.record = record

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.record(frame)
        await self.push_frame(frame, direction)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True, help="the server's http:// base URL")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--voice", help="a saved voice id (default: the service's default, none)")
    parser.add_argument("--text", action="append", help="one turn's text (repeatable)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of silence between turns")
    args = parser.parse_args()
    texts = args.text or ["Hello there. How are you today?", "Fine, thanks."]

    settings = FishAudioTTSService.Settings(voice=args.voice) if args.voice else None
    tts = FishAudioTTSService(api_key=args.api_key, settings=settings)
    tts._base_url = args.base_url.replace("http", "ws", 1) + "/v1/tts/live"

    turns: list[dict] = []
    errors: list[str] = []
    turn_done = asyncio.Event()

    def down(frame: Frame) -> None:
        if isinstance(frame, TTSAudioRawFrame) and turns:
            turn = turns[-1]
            turn["frames"] += 1
            turn["bytes"] += len(frame.audio)
            turn["samples"] += len(frame.audio) // (2 * frame.num_channels)
            turn["sample_rate"] = frame.sample_rate
        elif isinstance(frame, TTSStoppedFrame):
            turn_done.set()

    def up(frame: Frame) -> None:
        if isinstance(frame, ErrorFrame):
            errors.append(str(frame.error))
            turn_done.set()

    pipeline = Pipeline([Recorder(FrameDirection.UPSTREAM, up), tts, Recorder(FrameDirection.DOWNSTREAM, down)])
    worker = PipelineWorker(pipeline, cancel_on_idle_timeout=False, params=PipelineParams())
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def speak() -> None:
        await asyncio.wait_for(started.wait(), timeout=30)
        for number, text in enumerate(texts):
            if number:
                await asyncio.sleep(args.pause)
            turns.append({"frames": 0, "bytes": 0, "samples": 0, "sample_rate": None})
            turn_done.clear()
            await worker.queue_frame(TTSSpeakFrame(text))
            try:
                await asyncio.wait_for(turn_done.wait(), timeout=TURN_TIMEOUT_S)
            except TimeoutError:
                errors.append(f"no TTSStoppedFrame within {TURN_TIMEOUT_S} s")
            turns[-1]["ok"] = turns[-1]["samples"] > 0
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), speak())
    print(json.dumps({"service_sample_rate": tts.sample_rate, "turns": turns, "errors": errors}))


if __name__ == "__main__":
    asyncio.run(main())
