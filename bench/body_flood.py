"""N concurrent maximal request bodies against the server: its RSS before, at peak and after.

    python bench/body_flood.py [--bodies 30] [--size BYTES] [--hold-slots]

Starts `python -m fish_worker.server` on 127.0.0.1 on a tiny random checkpoint (as bench/load.py does;
extra server settings come from this process's FISH_* environment), then sends --bodies authenticated
`/run` bodies of --size bytes (default: the server's largest, FISH_MAX_BODY_BYTES' default, ~23.4 MB)
at once, each holding a junk `reference_audio`, so each is read, parsed and refused with 400. With
--hold-slots, long streamed jobs first fill every generation slot, so bodies that are read queue with
their input (the worst case). Prints the server's RSS (VmRSS) before, its peak while the bodies are
in flight, and the answers.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from load import rss_kib, start_server  # noqa: E402

DEFAULT_SIZE = -(-16 * 1024 * 1024 // 3) * 4 + 1024 * 1024  # base64 of 16 MiB + 1 MiB (settings.body_limit)
LONG_JOB = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}


def body_of(size: int) -> bytes:
    head, tail = b'{"input": {"message": "Hello there.", "max_tokens": 4, "reference_audio": "', b'"}}'
    filler = size - len(head) - len(tail)
    return head + b"QUJD" * (filler // 4) + tail


def send(address: tuple[str, int], key: str, body: bytes, statuses: list) -> None:
    try:
        with socket.create_connection(address, timeout=600) as sock:
            sock.sendall(
                (
                    f"POST /run HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nAuthorization: Bearer {key}\r\n\r\n"
                ).encode()
            )
            sock.sendall(body)
            data = b""
            while b"\r\n" not in data:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
            statuses.append(int(data.split(b" ", 2)[1]) if data else "closed")
    except OSError as exc:
        statuses.append(type(exc).__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=30)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--hold-slots", action="store_true", help="fill every generation slot with a long job first")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--size-of-model", dest="size_name", choices=["tiny", "bench"], default="tiny")
    args = parser.parse_args()
    key = "flood-key"
    with tempfile.TemporaryDirectory() as workdir:
        server_args = argparse.Namespace(
            checkpoint=None, size=args.size_name, max_concurrency=args.max_concurrency, max_tokens=args.max_tokens
        )
        server, base_url = start_server(Path(workdir), server_args, {"flood": key})
        address = ("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
        auth = {"Authorization": f"Bearer {key}"}
        try:
            long_jobs = []
            if args.hold_slots:
                long_jobs = [
                    httpx.post(f"{base_url}/v2/ep/run", json={"input": LONG_JOB}, headers=auth, timeout=120).json()[
                        "id"
                    ]
                    for _ in range(args.max_concurrency)
                ]
                time.sleep(2)
            body = body_of(args.size)
            before = rss_kib(server.pid)["VmRSS"]
            peak, done, statuses = [before], threading.Event(), []

            def sample() -> None:
                while not done.is_set():
                    peak.append(rss_kib(server.pid)["VmRSS"])
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            senders = [threading.Thread(target=send, args=(address, key, body, statuses)) for _ in range(args.bodies)]
            for sender in senders:
                sender.start()
            if long_jobs:
                time.sleep(10)  # the bodies that are read queue behind the long jobs meanwhile
                for job_id in long_jobs:
                    httpx.post(f"{base_url}/v2/ep/cancel/{job_id}", headers=auth, timeout=120)
            for sender in senders:
                sender.join(600)
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            after = rss_kib(server.pid)["VmRSS"]
            answers: dict = {}
            for status in statuses:
                answers[status] = answers.get(status, 0) + 1
            print(
                json.dumps(
                    {
                        "bodies": args.bodies,
                        "body_bytes": len(body),
                        "hold_slots": args.hold_slots,
                        "rss_before_mib": round(before / 1024),
                        "rss_peak_mib": round(max(peak) / 1024),
                        "rss_after_mib": round(after / 1024),
                        "answers": answers,
                        "elapsed_s": round(elapsed, 1),
                    }
                ),
                flush=True,
            )
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
