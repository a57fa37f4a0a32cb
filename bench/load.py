"""Load the self-hosted server: several tenants sending a mix of requests for a bounded time.

    python bench/load.py [--duration 30] [--clients 8] [--tenants 3] [--size tiny|bench] [--checkpoint DIR]

Starts `python -m fish_worker.server` on 127.0.0.1 (a random checkpoint written to a temporary
directory unless --checkpoint is given; a tiny chat model too, so chat turns are real), gives each
tenant a saved voice, then runs --clients concurrent clients until --duration seconds have passed.
Each client request is drawn at random (seeded) from:

  plain     POST /run, a whole mp3 result
  stream    POST /run with stream: true (NDJSON, read to the end)
  clone     POST /run with reference_audio (a 3 s WAV), or /v1/audio/speech with the tenant's saved voice
  chat      POST /run in chat mode, continuing the client's conversation
  v2        POST /v2/ep/runsync (the RunPod door)

Prints throughput, p50/p95/p99 latency (all and per kind), answers by HTTP status, and the server's
peak RSS (VmHWM). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Meanwhile, the clouds gathered slowly above the town.",
    "By evening the rain had washed the streets clean.",
    "She counted the stars until she fell asleep.",
    "A gentle breeze carried the scent of pine trees.",
]
KINDS = ["plain", "stream", "clone", "chat", "v2"]


def reference_wav_b64(seconds: float = 3.0, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    buffer = io.BytesIO()
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def start_server(workdir: Path, args, keys: dict[str, str]) -> tuple[subprocess.Popen, str]:
    checkpoint = args.checkpoint
    if checkpoint is None:
        from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

        checkpoint = write_tiny_checkpoint(workdir / "checkpoint", seed=0, size=args.size)
    from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model

    chat_dir = write_tiny_chat_model(workdir / "chat", seed=0)
    port = free_port()
    env = {
        **os.environ,
        "FISH_CHECKPOINT_DIR": str(checkpoint),
        "FISH_CHAT_MODEL_DIR": str(chat_dir),
        "FISH_VOICES_DIR": str(workdir / "voices"),
        "FISH_DOWNLOAD_MISSING": "false",
        "FISH_HOST": "127.0.0.1",
        "FISH_PORT": str(port),
        "FISH_LOG_LEVEL": "WARNING",
        "FISH_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in keys.items()),
        "FISH_MAX_CONCURRENCY": str(args.max_concurrency),
        "TQDM_DISABLE": "1",
        # A random chat model rarely ends a sentence: bound each spoken sentence like the others.
        "FISH_CHAT_FRAMES_PER_SENTENCE": str(args.max_tokens),
    }
    server = subprocess.Popen([sys.executable, "-m", "fish_worker.server"], cwd=ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return server, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("server did not come up within 300 s")


class Client:
    def __init__(
        self,
        number: int,
        tenant: str,
        key: str,
        http: httpx.AsyncClient,
        rng: random.Random,
        reference: str,
        max_tokens: int,
    ) -> None:
        self.tenant, self.http, self.rng = tenant, http, rng
        self.auth = {"Authorization": f"Bearer {key}"}
        self.conversation = f"load-{number}"
        self.reference, self.max_tokens = reference, max_tokens

    def text(self) -> str:
        return " ".join(self.rng.sample(SENTENCES, self.rng.randint(1, 2)))

    async def request(self, kind: str) -> int:
        job = {"message": self.text(), "max_tokens": self.max_tokens, "mode": "tts"}
        if kind == "plain":
            return (
                await self.http.post("/run", json={"input": {**job, "audio_format": "mp3"}}, headers=self.auth)
            ).status_code
        if kind == "stream":
            async with self.http.stream(
                "POST", "/run", json={"input": {**job, "stream": True, "audio_format": "opus"}}, headers=self.auth
            ) as response:
                async for line in response.aiter_lines():
                    if line and json.loads(line)["status"] == "error":
                        return 599  # the stream ended in an error after its 200
                return response.status_code
        if kind == "clone":
            if self.rng.random() < 0.5:
                clone = {**job, "reference_audio": self.reference, "reference_text": "A steady tone."}
                return (await self.http.post("/run", json={"input": clone}, headers=self.auth)).status_code
            speech = {
                "model": "tts-1",
                "input": job["message"],
                "voice": f"{self.tenant}-voice",
                "response_format": "wav",
                "max_tokens": self.max_tokens,
            }
            return (await self.http.post("/v1/audio/speech", json=speech, headers=self.auth)).status_code
        if kind == "chat":
            chat = {
                "message": "Tell me something short.",
                "mode": "chat",
                "conversation_id": self.conversation,
                "max_tokens": 12,
            }
            return (await self.http.post("/run", json={"input": chat}, headers=self.auth)).status_code
        response = await self.http.post("/v2/ep/runsync", json={"input": job}, headers=self.auth)
        return response.status_code if response.json().get("status") != "FAILED" else 598


async def drive(base_url: str, keys: dict[str, str], args) -> tuple[list[tuple[str, float, int]], float]:
    reference = reference_wav_b64()
    timeout = httpx.Timeout(300, connect=10)
    limits = httpx.Limits(max_connections=args.clients * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        for tenant, key in keys.items():  # each tenant's saved voice, for the cloning requests
            save = {"action": "save_voice", "voice_id": f"{tenant}-voice", "reference_audio": reference}
            response = await http.post("/run", json={"input": save}, headers={"Authorization": f"Bearer {key}"})
            response.raise_for_status()
        tenants = list(keys.items())
        clients = [
            Client(i, *tenants[i % len(tenants)], http, random.Random(args.seed + i), reference, args.max_tokens)
            for i in range(args.clients)
        ]
        results: list[tuple[str, float, int]] = []
        started = time.monotonic()
        deadline = started + args.duration

        async def loop(client: Client) -> None:
            while time.monotonic() < deadline:
                kind = client.rng.choice(KINDS)
                t0 = time.monotonic()
                try:
                    status = await client.request(kind)
                except httpx.HTTPError as exc:
                    status = f"{type(exc).__name__}"
                results.append((kind, time.monotonic() - t0, status))
                if status == 429:
                    await asyncio.sleep(1)

        await asyncio.gather(*(loop(c) for c in clients))
        return results, time.monotonic() - started


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"p50 {p50:6.2f} s  p95 {p95:6.2f} s  p99 {p99:6.2f} s"


def report(results, elapsed: float, memory: dict[str, int], args) -> None:
    ok = [r for r in results if r[2] == 200]
    print(
        f"\n{len(results)} requests in {elapsed:.1f} s from {args.clients} clients of {args.tenants} tenants "
        f"(--size {args.size}, FISH_MAX_CONCURRENCY={args.max_concurrency}, max_tokens {args.max_tokens})"
    )
    print(f"throughput   {len(ok) / elapsed:.2f} successful requests/s")
    print(f"latency      {percentiles([r[1] for r in ok])}   (successful requests)")
    by_kind = defaultdict(list)
    for kind, latency, _status in ok:
        by_kind[kind].append(latency)
    for kind in KINDS:
        print(f"  {kind:<10} {len(by_kind[kind]):4d} ok  {percentiles(by_kind[kind])}")
    print(f"answers      {dict(sorted(Counter(str(r[2]) for r in results).items()))}")
    print(f"server RSS   peak {memory['VmHWM'] / 1024:.0f} MiB, at the end {memory['VmRSS'] / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--tenants", type=int, default=3, help="API keys the clients share (default 3)")
    parser.add_argument("--size", choices=["tiny", "bench"], default="tiny", help="random checkpoint's size")
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint instead of a random one")
    parser.add_argument("--max-concurrency", type=int, default=4, help="FISH_MAX_CONCURRENCY (default 4)")
    parser.add_argument("--max-tokens", type=int, default=24, help="codec frames per sentence (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keys = {f"tenant{i}": f"load-key-{i}-{random.Random(i).getrandbits(64):x}" for i in range(args.tenants)}
    with tempfile.TemporaryDirectory(prefix="fish-load-") as workdir:
        server, base_url = start_server(Path(workdir), args, keys)
        try:
            results, elapsed = asyncio.run(drive(base_url, keys, args))
            memory = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(results, elapsed, memory, args)


if __name__ == "__main__":
    main()
