"""Fish live WebSocket (/v1/tts/live): time from the end of a sentence's text to its first audio.

    python bench/fish_live_latency.py [--checkpoint DIR | --size tiny|bench] [--device cpu|cuda]
                                      [--sentences 6] [--words-per-s 8] [--out FILE.json]

Starts the real server (uvicorn, 127.0.0.1) on a checkpoint (default: a random one written by
`write_tiny_checkpoint`, so the numbers measure the pipeline, not a real model's speed) and plays
an LLM: words of BENCH sentences arrive at --words-per-s over one live session. For sentence k,
"end of text" is the moment the piece carrying its final punctuation was sent; "first audio" the
arrival of the first audio event whose `index` is k. Two modes:

  typing  no flush: the server knows a sentence is complete once the next word arrives, so the
          latency includes one inter-word gap (what an LLM agent sees)
  flush   a flush event follows each sentence's last piece (what a client that knows its
          sentence boundaries sees)

Sentences are synthesised one after another, so a sentence whose predecessor is still being
generated waits for it; that queueing is part of the number, as it is for a listener. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Meanwhile, the clouds gathered above the quiet town.",
    "By evening the rain had washed the streets clean.",
    "She counted the stars until she fell asleep.",
    "A gentle breeze carried the scent of pine trees.",
    "The old clock on the wall ticked through the night.",
    "Every morning the baker opened his shop at dawn.",
    "Nobody noticed the small boat drifting out to sea.",
]


def start_server(checkpoint: Path, device: str, max_frames: int):
    import uvicorn

    from fish_worker.jobs.runner import JobRunner
    from fish_worker.server import create_app
    from fish_worker.tts.loader import load_tts, warm_up
    from fish_worker.settings import ServerSettings, Settings, StorageSettings

    settings = Settings(
        checkpoint_dir=checkpoint,
        device=device,
        warmup=True,
        max_tokens_limit=max(max_frames, 1),
        storage=StorageSettings(voices_dir=Path(tempfile.mkdtemp())),
        server=ServerSettings(auth_disabled=True),
    )
    service = load_tts(settings)
    warm_up(service)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(JobRunner(service, settings), settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


def run_session(base_url: str, sentences: list[str], words_per_s: float, flush: bool, max_frames: int) -> list[float]:
    """One live session; the latency of each sentence, in seconds."""
    import httpx
    import ormsgpack
    from httpx_ws import connect_ws

    ended: dict[int, float] = {}
    first_audio: dict[int, float] = {}
    with httpx.Client(base_url=base_url) as http, connect_ws("/v1/tts/live", client=http) as ws:
        request = {"text": "", "format": "pcm", "max_new_tokens": max_frames}
        ws.send_bytes(ormsgpack.packb({"event": "start", "request": request}))

        def typist():
            for k, sentence in enumerate(sentences):
                words = sentence.split(" ")
                for i, word in enumerate(words):
                    time.sleep(1 / words_per_s)
                    ws.send_bytes(ormsgpack.packb({"event": "text", "text": (" " if i or k else "") + word}))
                    if i == len(words) - 1:
                        ended[k] = time.perf_counter()
                        if flush:
                            ws.send_bytes(ormsgpack.packb({"event": "flush"}))
            ws.send_bytes(ormsgpack.packb({"event": "stop"}))

        sender = threading.Thread(target=typist)
        sender.start()
        while True:
            event = ormsgpack.unpackb(ws.receive_bytes(timeout=600))
            if event["event"] == "finish":
                break
            if event["event"] == "audio" and event.get("index", -1) >= 0:
                first_audio.setdefault(event["index"], time.perf_counter())
        sender.join()
    return [first_audio[k] - ended[k] for k in sorted(ended) if k in first_audio]


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "median_ms": round(1000 * statistics.median(ordered), 1),
        "p90_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint directory (default: a random one)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "bench"], help="random checkpoint size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--words-per-s", type=float, default=8.0)
    parser.add_argument("--max-frames", type=int, default=40, help="codec frames per sentence at most")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import logging

    from loguru import logger

    logger.remove()
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

            checkpoint = write_tiny_checkpoint(Path(tmp) / "ckpt", seed=0, size=args.size)
        base_url, server = start_server(checkpoint, args.device, args.max_frames)
        sentences = (SENTENCES * (args.sentences // len(SENTENCES) + 1))[: args.sentences]
        results = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device},
            "checkpoint": str(args.checkpoint) if args.checkpoint else f"random ({args.size})",
            "words_per_s": args.words_per_s,
            "max_frames": args.max_frames,
        }
        for mode in ("typing", "flush"):
            latencies = run_session(base_url, sentences, args.words_per_s, mode == "flush", args.max_frames)
            results[mode] = summary(latencies)
            print(f"{mode:6s} end of sentence text → first audio: {results[mode]}", flush=True)
        server.should_exit = True
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
