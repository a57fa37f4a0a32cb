"""Chat jobs on both chat backends: time from job start to the reply's first text and first audio.

    python bench/chat_backends.py [--jobs 1 8] [--max-tokens 60] [--out FILE.json]

Writes a tiny TTS checkpoint and the tiny random chat model (so the numbers measure the pipeline, not a
real model's speed), then runs streamed chat jobs through the JobRunner, N at once, with each backend:
`local` (ChatModel in this process: replies decoded together) and `remote` (`transformers serve
--continuous-batching` on CPU as a separate process, reached over HTTP by RemoteChatBackend). Reports
per setting the median and worst time to the first text delta, the first audio chunk and the job's end,
and the wall time of the N jobs. Both backends share these 2 CPU cores with the speech model here, so
compare them with each other, not with a GPU deployment. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

MESSAGES = [
    "Hello, how are you?",
    "What's the weather like today?",
    "And what about tomorrow?",
    "Tell me something nice.",
    "Where should we go this weekend?",
    "What time is it?",
    "Can you sing?",
    "Goodbye for now.",
]


def start_engine(model_dir: Path, port: int) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--continuous-batching",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("transformers serve did not start")


async def one_job(runner, index: int, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    times: dict[str, float] = {}
    from fish_worker.errors import JobFailure
    from fish_worker.jobs.job import Job

    job = Job(
        id=f"b{index}",
        input={"message": MESSAGES[index % len(MESSAGES)], "max_tokens": max_tokens, "seed": index, "stream": True},
    )
    async for chunk in runner.stream(job):
        now = time.perf_counter() - started
        if isinstance(chunk, JobFailure):
            raise SystemExit(f"job {index} failed: {chunk.message}")
        if "text_delta" in chunk:
            times.setdefault("first_text_s", now)
        if "audio" in chunk:
            times.setdefault("first_audio_s", now)
    times["end_s"] = time.perf_counter() - started
    return times


async def run_jobs(runner, count: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_job(runner, i, max_tokens) for i in range(count)))
    wall = time.perf_counter() - started
    summary = {"jobs": count, "wall_s": round(wall, 3)}
    for key in ("first_text_s", "first_audio_s", "end_s"):
        values = [r[key] for r in results if key in r]
        summary[key] = {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from fish_worker.conversations import MemoryConversationStore
    from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint
    from fish_worker.dialogue.llm import ChatModel
    from fish_worker.dialogue.remote_chat import RemoteChatBackend
    from fish_worker.dialogue.turns import ConversationService
    from fish_worker.jobs.runner import JobRunner
    from fish_worker.settings import ChatSettings, Settings, StorageSettings
    from fish_worker.tts.loader import load_tts, warm_up

    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    checkpoint = write_tiny_checkpoint(work / "ckpt", seed=0)
    chat_dir = write_tiny_chat_model(work / "chat", seed=0)
    settings = Settings(
        checkpoint_dir=checkpoint,
        device="cpu",
        warmup=False,
        max_concurrency=max(args.jobs),
        storage=StorageSettings(voices_dir=work / "voices"),
        chat=ChatSettings(frames_per_sentence=8),
    )
    service = load_tts(settings)
    warm_up(service)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = start_engine(chat_dir, port)
    backends = {
        "local": ChatModel.load(chat_dir, device="cpu"),
        "remote": RemoteChatBackend(f"http://127.0.0.1:{port}/v1", read_timeout_s=300),
    }
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "runs": []}
    try:
        for name, chat in backends.items():
            runner = JobRunner(
                service,
                settings,
                ConversationService(
                    service, MemoryConversationStore(ttl_s=60, max_conversations=100), chat=chat, settings=settings
                ),
            )
            asyncio.run(run_jobs(runner, 1, 8))  # warm-up: first request compiles / fills caches
            for count in args.jobs:
                summary = {"backend": name, **asyncio.run(run_jobs(runner, count, args.max_tokens))}
                print(json.dumps(summary), flush=True)
                report["runs"].append(summary)
    finally:
        backends["remote"].close()
        engine.terminate()
        engine.wait(timeout=30)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
