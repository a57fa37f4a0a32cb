"""Soak: N small jobs against the server, its RSS printed every --every jobs, under one allocator.

    python bench/soak.py [--jobs 600] [--every 50] [--clients 4] [--allocator glibc|arena2|jemalloc]

Starts `python -m fish_worker.server` on 127.0.0.1 on a tiny random checkpoint (as bench/load.py does)
with the chosen allocator: `glibc` (its defaults: up to 8 arenas per core), `arena2`
(`MALLOC_ARENA_MAX=2`) or `jemalloc` (Debian's libjemalloc2 through `LD_PRELOAD`). Clients send a
seeded mix of small jobs (plain, streamed, a cloned voice from a short reference, `/v1/audio/speech`)
until --jobs have been answered, and the server's RSS is printed after every --every of them, so a
growth that does not level off shows as a rising column. Speed is not the point: use a tiny checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from load import SENTENCES, reference_wav_b64, rss_kib, start_server  # noqa: E402

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2 (the image installs it)
ALLOCATORS = {
    "glibc": {},
    "arena2": {"MALLOC_ARENA_MAX": "2"},
    "jemalloc": {"LD_PRELOAD": JEMALLOC},
}


def allocator_environment(name: str) -> dict[str, str]:
    env = dict(ALLOCATORS[name])
    if name == "jemalloc" and not Path(JEMALLOC).exists():
        raise SystemExit(f"{JEMALLOC} is missing: apt-get install -y libjemalloc2")
    return env


async def soak(base_url: str, key: str, args, server_pid: int) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    reference = reference_wav_b64(seconds=2.0)
    rng = random.Random(args.seed)
    answered = 0
    statuses: dict[int, int] = {}
    started = time.monotonic()
    print(f"{'jobs':>6} {'RSS MiB':>8} {'peak MiB':>9} {'elapsed s':>10}", flush=True)

    def report() -> None:
        memory = rss_kib(server_pid)
        print(
            f"{answered:>6} {memory['VmRSS'] / 1024:>8.0f} {memory['VmHWM'] / 1024:>9.0f} "
            f"{time.monotonic() - started:>10.1f}",
            flush=True,
        )

    async def one(http: httpx.AsyncClient, kind: str, text: str) -> int:
        job = {"message": text, "max_tokens": args.max_tokens, "mode": "tts"}
        if kind == "plain":
            fmt = rng.choice(["wav", "mp3", "opus", "flac"])
            return (await http.post("/run", json={"input": {**job, "audio_format": fmt}}, headers=auth)).status_code
        if kind == "stream":
            async with http.stream(
                "POST", "/run", json={"input": {**job, "stream": True, "audio_format": "mp3"}}, headers=auth
            ) as response:
                async for _ in response.aiter_bytes():
                    pass
                return response.status_code
        if kind == "clone":
            clone = {**job, "reference_audio": reference, "reference_text": "A steady tone."}
            return (await http.post("/run", json={"input": clone}, headers=auth)).status_code
        speech = {
            "model": "tts-1",
            "input": text,
            "voice": "alloy",
            "response_format": "wav",
            "max_tokens": args.max_tokens,
        }
        return (await http.post("/v1/audio/speech", json=speech, headers=auth)).status_code

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answered
        while answered < args.jobs:
            kind = rng.choice(["plain", "stream", "clone", "speech"])
            status = await one(http, kind, rng.choice(SENTENCES))
            statuses[status] = statuses.get(status, 0) + 1
            answered += 1
            if answered % args.every == 0:
                report()

    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(args.clients)))
    print(f"answers {dict(sorted(statuses.items()))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc")
    parser.add_argument("--max-tokens", type=int, default=16, help="codec frames per sentence")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--size", choices=["tiny", "bench"], default="tiny")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a real checkpoint instead of a random one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # The server inherits this process's environment (start_server): the allocator applies to it only.
    os.environ.update(allocator_environment(args.allocator))
    print(
        f"allocator {args.allocator} {ALLOCATORS[args.allocator] or '(glibc defaults)'}; {args.jobs} jobs, "
        f"{args.clients} clients, FISH_MAX_CONCURRENCY={args.max_concurrency}, max_tokens {args.max_tokens}",
        flush=True,
    )
    key = "soak-key"
    with tempfile.TemporaryDirectory() as workdir:
        server, base_url = start_server(Path(workdir), args, {"soak": key})
        for name in ALLOCATORS[args.allocator]:
            os.environ.pop(name)  # only the server runs under it, not this client
        with open(f"/proc/{server.pid}/maps") as maps:
            print("jemalloc mapped in the server:", "libjemalloc" in maps.read(), flush=True)
        try:
            asyncio.run(soak(base_url, key, args, server.pid))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
