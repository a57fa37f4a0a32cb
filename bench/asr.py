"""Speech in on CPU: transcription real-time factor, batching, and a voice message's time to first reply audio.

    python bench/asr.py [--sizes tiny small] [--repeats 3] [--batch 4] [--threads 1] [--out FILE.json]

Speaks a 10 s clip with espeak-ng (real speech, decoded through the worker's own input decoder), then
for each random Whisper shape the devtools writer makes (`tiny`: 64 wide, 2+2 layers; `small`:
whisper-small's 768 wide, 12+12 layers, 12 heads, with the tiny vocabulary) reports the load time and
the median time to transcribe the clip alone, as a real-time factor (seconds of compute per second of
audio; below 1 is faster than real time), and the wall time of `--batch` clips sent at once (they
share one batch). A random model decodes until the checkpoint's 40-token limit for the window, about as
many tokens as 10 s of real speech gives, so the decoder's share is realistic, not its text.

Then a streamed chat job with the clip as its `audio` on the tiny TTS checkpoint, the tiny chat model
and the tiny Whisper: time to the transcript chunk, the first reply text and the first reply audio,
against the same job given the transcript as `message`. Everything shares this machine's CPU cores,
so compare the rows with each other. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

CLIP_SECONDS = 10.0
SPEECH = (
    "Good morning. I would like to know what the weather will be like this afternoon in Paris, "
    "and whether I should take an umbrella with me when I go out to meet my friends for lunch."
)


def speech_clip(work: Path) -> bytes:
    """A WAV of exactly CLIP_SECONDS of espeak-ng speech (cut, or padded with the speech again)."""
    import numpy as np
    import soundfile

    path = work / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SPEECH], check=True, timeout=60)
    audio, rate = soundfile.read(path, dtype="float32")
    samples = int(CLIP_SECONDS * rate)
    audio = np.resize(audio, samples)  # repeats it if short
    soundfile.write(path, audio, rate)
    return path.read_bytes()


def bench_size(size: str, work: Path, wav: bytes, repeats: int, batch: int) -> dict:
    from fish_worker.asr.transcriber import Transcriber
    from fish_worker.asr.whisper import WhisperRecognizer
    from fish_worker.devtools.tiny_whisper import write_tiny_whisper

    model_dir = write_tiny_whisper(work / f"whisper-{size}", seed=0, size=size)
    started = time.perf_counter()
    recognizer = WhisperRecognizer.load(model_dir, device="cpu", max_batch=batch)
    load_s = time.perf_counter() - started
    transcriber = Transcriber(recognizer, max_seconds=60.0, max_bytes=1 << 24)
    transcriber.transcribe_bytes(wav, language="en")  # warm-up
    alone = []
    for _ in range(repeats):
        started = time.perf_counter()
        transcriber.transcribe_bytes(wav, language="en")
        alone.append(time.perf_counter() - started)
    walls = []
    for _ in range(repeats):
        gate = threading.Barrier(batch)

        def one(gate: threading.Barrier = gate) -> None:
            gate.wait()
            transcriber.transcribe_bytes(wav, language="en")

        threads = [threading.Thread(target=one) for _ in range(batch)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        walls.append(time.perf_counter() - started)
    batches, requests = recognizer.batches
    alone_s = statistics.median(alone)
    wall_s = statistics.median(walls)
    return {
        "size": size,
        "parameters_m": round(sum(p.numel() for p in recognizer.model.parameters()) / 1e6, 1),
        "load_s": round(load_s, 2),
        "alone_s": round(alone_s, 3),
        "rtf": round(alone_s / CLIP_SECONDS, 3),
        f"batch_{batch}_wall_s": round(wall_s, 3),
        f"batch_{batch}_rtf_per_clip": round(wall_s / batch / CLIP_SECONDS, 3),
        "requests_per_batch": round(requests / batches, 2),
    }


async def first_audio(runner, job_input: dict) -> dict[str, float]:
    from fish_worker.errors import JobFailure
    from fish_worker.jobs.job import Job

    started = time.perf_counter()
    times: dict[str, float] = {}
    async for chunk in runner.stream(Job(id="b", input=job_input)):
        now = round(time.perf_counter() - started, 3)
        if isinstance(chunk, JobFailure):
            raise SystemExit(f"job failed: {chunk.message}")
        for key, name in (("transcript", "transcript_s"), ("text_delta", "first_text_s"), ("audio", "first_audio_s")):
            if key in chunk:
                times.setdefault(name, now)
    times["end_s"] = round(time.perf_counter() - started, 3)
    return times


def bench_voice_message(work: Path, wav: bytes, repeats: int) -> dict:
    from fish_worker.asr.transcriber import Transcriber
    from fish_worker.asr.whisper import WhisperRecognizer
    from fish_worker.conversations import MemoryConversationStore
    from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint
    from fish_worker.dialogue.llm import ChatModel
    from fish_worker.dialogue.turns import ConversationService
    from fish_worker.jobs.runner import JobRunner
    from fish_worker.settings import ChatSettings, Settings, StorageSettings
    from fish_worker.tts.loader import load_tts, warm_up

    settings = Settings(
        checkpoint_dir=write_tiny_checkpoint(work / "ckpt", seed=0),
        device="cpu",
        warmup=False,
        storage=StorageSettings(voices_dir=work / "voices"),
        chat=ChatSettings(frames_per_sentence=8),
    )
    service = load_tts(settings)
    warm_up(service)
    chat = ChatModel.load(write_tiny_chat_model(work / "chat", seed=0), device="cpu")
    transcriber = Transcriber(
        WhisperRecognizer.load(work / "whisper-tiny", device="cpu"), max_seconds=60.0, max_bytes=1 << 24
    )
    runner = JobRunner(
        service,
        settings,
        ConversationService(
            service, MemoryConversationStore(ttl_s=60, max_conversations=10), chat=chat, settings=settings
        ),
        transcriber=transcriber,
    )
    heard = transcriber.transcribe_bytes(wav, language="en").text
    audio = base64.b64encode(wav).decode()
    common = {"language": "en", "max_tokens": 30, "seed": 1, "stream": True}
    asyncio.run(first_audio(runner, {"audio": audio, **common}))  # warm-up
    runs = {"voice": [], "text": []}
    for _ in range(repeats):
        runs["voice"].append(asyncio.run(first_audio(runner, {"audio": audio, **common})))
        runs["text"].append(asyncio.run(first_audio(runner, {"message": heard, **common})))
    return {
        kind: {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]} for kind, rows in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is fair on shared cores")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    wav = speech_clip(work)
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "clip_s": CLIP_SECONDS,
        "transcription": [],
    }
    for size in dict.fromkeys(["tiny", *args.sizes]):  # the tiny one is the voice-message run's recognizer
        row = bench_size(size, work, wav, args.repeats, args.batch)
        print(json.dumps(row), flush=True)
        if size in args.sizes:
            report["transcription"].append(row)
    report["voice_message_chat"] = bench_voice_message(work, wav, args.repeats)
    print(json.dumps({"voice_message_chat": report["voice_message_chat"]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
