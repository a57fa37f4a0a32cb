"""Helpers shared by several test modules (fixtures shared by several live in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import pytest
import redis
import soundfile as sf

from fish_worker.audio.formats import encode_audio, encode_audio_bytes
from fish_worker.jobs.job import Job
from fish_worker.jobs.runpod_adapter import runpod_chunks

if TYPE_CHECKING:
    from fish_worker.engine.generation import VoicePrompt

# --- jobs ----------------------------------------------------------------------------------------------------


def run_job(runner, job_input: dict) -> list[dict]:
    """The job's chunks as RunPod gets them: a failure is a last {"error": message} chunk."""

    async def collect():
        return [chunk async for chunk in runpod_chunks(runner.stream(Job(id="t", input=job_input)))]

    return asyncio.run(collect())


def wav_b64(
    seconds: float = 1.0,
    sample_rate: int = 16000,
    channels: int = 1,
    amplitude: float = 0.3,
    subtype: str = "PCM_16",
    fmt: str = "WAV",
) -> str:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=fmt, subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode()


def asgi_call(app, method: str, url: str, **kwargs):
    """One request against an ASGI app in process, on a fresh event loop (background jobs live in that loop)."""
    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


# --- decoding what the worker returned ----------------------------------------------------------------------


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def pcm16_of(x):
    """What 16-bit formats store: the samples as int16."""
    return np.frombuffer(encode_audio_bytes(x, "pcm16"), dtype="<i2")


def decode_soundfile(data, dtype="float32"):
    samples, rate = sf.read(io.BytesIO(data), dtype=dtype)
    return samples, rate


def decode_ffmpeg(data):
    """Decode with ffmpeg (PyAV), an independent decoder of the kind clients and browsers use."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        rate = stream.rate
    samples = np.concatenate(frames)
    return samples, rate


# --- chat: what a reply should be, straight from the models --------------------------------------------------

FRAMES = 3  # codec frames per spoken reply sentence (the tiny checkpoint never ends a sentence itself)


def expected_reply(chat_model, chat_settings, messages, seed, max_tokens=40) -> str:
    return chat_model.reply(
        messages, temperature=0.7, max_new_tokens=max_tokens, system_prompt=chat_settings.chat.system_prompt, seed=seed
    )


def expected_audio(service, text: str, seed: int, voice: VoicePrompt | None, frames: int = FRAMES) -> list[float]:
    """What speaking `text` in `voice` with this seed sounds like, straight from the TTS service."""
    from fish_worker.tts.requests import SynthesisRequest

    request = SynthesisRequest(text=text, seed=seed, frames_per_sentence=frames, voice=voice)
    chunks = list(service.synthesize(request))
    return encode_audio(np.concatenate([c.audio for c in chunks]), "float")  # as a float result carries it


def reference_prompt(service, reference: str, text: str) -> VoicePrompt:
    """`reference` (base64 text, as a job carries it) as the VoiceResolver encodes it."""
    from fish_worker.audio.reference import base64_audio
    from fish_worker.tts.requests import ReferenceClip

    return service.voices.encode_reference(ReferenceClip(base64_audio(reference), text))


# --- servers the tests start ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(app, **options) -> Iterator[tuple[str, int]]:
    """`app` on a real uvicorn (`options`: its Config's, e.g. uvicorn_options(...)) at a free port of
    127.0.0.1, in a thread; yields (host, port) once it listens and stops it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def start_redis_server(directory: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); Redis store tests need a real one")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.02)
    client.close()
    return process, url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# transformers serve's start on 2 busy cores took up to ~2 minutes.
TRANSFORMERS_SERVE_START_S = 360


@contextlib.contextmanager
def transformers_serve(model_dir: Path, log_dir: Path, *extra_args: str) -> Iterator[str]:
    """`transformers serve` (the installed transformers' OpenAI-compatible server) on `model_dir` at a
    free port on the CPU; yields its /v1 URL once /health answers, and stops it afterwards."""
    import sys
    import urllib.request

    port = free_port()
    log_path = log_dir / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra_args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TRANSFORMERS_SERVE_START_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


BUCKET = "fish-results"
CREDENTIALS = {"access_key_id": "test-key", "secret_access_key": "test-secret"}


class DecoderSteps:
    """Counts a Whisper model's decoder steps (a forward hook), each made `delay_s` slower, so a test can
    stop a transcription mid-way and count what ran after the stop (events, never timings)."""

    def __init__(self, model, delay_s: float = 0.0) -> None:
        self.count = 0
        self.started = threading.Event()  # a decoder step has run
        self._delay_s = delay_s
        self._handle = model.model.decoder.register_forward_hook(self._step)

    def _step(self, module, args, output) -> None:
        self.count += 1
        self.started.set()
        if self._delay_s:
            time.sleep(self._delay_s)

    def wait_for(self, steps: int, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.count < steps and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.count >= steps, f"only {self.count} decoder steps ran"
        return self.count

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> DecoderSteps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
