"""Drive LiveKit's Fish Audio plugin (livekit-plugins-fishaudio, unmodified) against a server.

Run with the clients venv's python (scripts/setup_clients_env.sh), outside a LiveKit room: a TTS
plugin synthesizes standalone given an aiohttp session. Every constructor argument is the plugin's
default except `base_url`, `api_key` and, with --voice, `voice_id`. Prints one JSON object:

    {"mode", "requests": [{"ok", "error", "status", "body", "frames", "samples", "sample_rate"}, ...]}

--mode http:   tts.synthesize(text)  (POST /v1/tts, msgpack body, a wav file in the answer)
--mode stream: tts.stream() twice in a row on the same TTS object, as an agent does one per turn
               (the WebSocket /v1/tts/live, one sentence text+flush at a time)
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import fishaudio

NO_RETRY = APIConnectOptions(max_retry=0)  # a failure is reported as it is, not retried 3 times


async def collect(audio_stream) -> dict:
    frames = samples = 0
    rate = None
    async with audio_stream:
        async for event in audio_stream:
            frames += 1
            samples += event.frame.samples_per_channel
            rate = event.frame.sample_rate
    return {"ok": samples > 0, "error": None, "frames": frames, "samples": samples, "sample_rate": rate}


async def one(make_stream) -> dict:
    try:
        return await collect(make_stream())
    except APIStatusError as exc:
        return {
            "ok": False,
            "error": type(exc).__name__,
            "status": exc.status_code,
            "body": exc.body,
            "message": exc.message,
        }
    except Exception as exc:  # reported, so the test shows what the client saw
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--voice", help="voice_id (default: the plugin's default, a Fish cloud voice)")
    parser.add_argument("--mode", choices=["http", "stream"], required=True)
    parser.add_argument("--text", default="Hello there. How are you today?")
    args = parser.parse_args()

    options = {"voice_id": args.voice} if args.voice else {}
    async with aiohttp.ClientSession() as session:
        tts = fishaudio.TTS(base_url=args.base_url, api_key=args.api_key, http_session=session, **options)
        if args.mode == "http":
            requests = [await one(lambda: tts.synthesize(args.text, conn_options=NO_RETRY))]
        else:

            def streamed():
                stream = tts.stream(conn_options=NO_RETRY)
                stream.push_text(args.text)
                stream.end_input()
                return stream

            requests = [await one(streamed), await one(streamed)]
        await tts.aclose()
    print(json.dumps({"mode": args.mode, "plugin_sample_rate": tts.sample_rate, "requests": requests}))


if __name__ == "__main__":
    asyncio.run(main())
