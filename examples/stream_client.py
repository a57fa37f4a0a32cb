"""Stream speech from the `/run` door and write the audio to a file as it arrives (httpx).

    python examples/stream_client.py --url http://localhost:8000 --text "Hello there." --out hello.wav
    python examples/stream_client.py --url https://ENDPOINT_ID.api.runpod.ai --text "Hi." --out hi.wav

Works unchanged against the self-hosted server and a RunPod load-balancing endpoint. The key comes
from --key, else FISH_API_KEY, else RUNPOD_API_KEY. The response is NDJSON: one JSON object per
line, `{"id", "status": "success", "output": {text, audio, ...}}`, or a last `{"status": "error"}`.
With audio_format "wav" the base64 payloads, decoded and appended, are one WAV file.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx


def stream_chunks(
    url: str, job_input: dict[str, Any], key: str | None = None, timeout: float = 600.0
) -> Iterator[dict[str, Any]]:
    """POST /run with stream: true; yield each chunk's `output` as its line arrives."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"input": {**job_input, "stream": True}}
    with httpx.stream("POST", url.rstrip("/") + "/run", json=body, headers=headers, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():  # splits on newlines, however the bytes were chunked
            if not line.strip():
                continue
            event = json.loads(line)
            if event["status"] != "success":
                raise RuntimeError(f"job {event.get('id')} failed: {event.get('error')}")
            yield event["output"]


def save_stream(
    url: str, text: str, out: BinaryIO, key: str | None = None, audio_format: str = "wav", **fields: Any
) -> dict[str, Any]:
    """Write the streamed audio to `out`; return {"text", "chunks", "bytes"}."""
    texts, chunks, size = [], 0, 0
    for chunk in stream_chunks(url, {"message": text, "audio_format": audio_format, **fields}, key):
        data = base64.b64decode(chunk["audio"])
        out.write(data)
        out.flush()  # playable as it grows
        chunks, size = chunks + 1, size + len(data)
        if chunk.get("text"):
            texts.append(chunk["text"])
    return {"text": " ".join(texts), "chunks": chunks, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", required=True, help="file to write (e.g. speech.wav)")
    parser.add_argument("--format", default="wav", choices=["wav", "pcm16", "flac", "mp3", "opus"])
    parser.add_argument("--key", default=os.environ.get("FISH_API_KEY") or os.environ.get("RUNPOD_API_KEY"))
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args()
    extra = {"max_tokens": args.max_tokens} if args.max_tokens else {}
    with open(args.out, "wb") as out:
        try:
            summary = save_stream(args.url, args.text, out, args.key, args.format, **extra)
        except (RuntimeError, httpx.HTTPError) as exc:
            sys.exit(f"error: {exc}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
