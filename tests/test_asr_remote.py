"""The remote recognizer (fish_worker/asr/remote.py) against a real OpenAI-compatible transcription
server, `transformers serve` with the tiny Whisper on CPU, and against stub answers for what a real
server does wrong (refused keys, rate limits, error pages, nonsense, silence): each a bounded
SpeechRecognizerError (or a 400 naming `language`), never a traceback."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from fish_worker.asr.backend import ASR_SAMPLE_RATE, SpeechRecognizer, SpeechRecognizerError, UnsupportedLanguageError
from fish_worker.asr.make_backend import make_transcriber
from fish_worker.asr.remote import RemoteRecognizer
from fish_worker.asr.transcriber import Transcriber
from fish_worker.errors import ErrorKind, JobInputError
from fish_worker.settings import AsrSettings
from helpers import TRANSFORMERS_SERVE_START_S, free_port, transformers_serve

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_S = TRANSFORMERS_SERVE_START_S
TONE = (0.3 * np.sin(2 * np.pi * 220 * np.arange(ASR_SAMPLE_RATE) / ASR_SAMPLE_RATE)).astype(np.float32)


# --- a real server: transformers serve --------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr_server(tiny_whisper_dir, tmp_path_factory):
    """`transformers serve` on the tiny Whisper: its /v1 URL."""
    with transformers_serve(tiny_whisper_dir, tmp_path_factory.mktemp("asr-server")) as url:
        yield url


@pytest.mark.timeout(SERVER_START_S + 120)
def test_a_real_server_transcribes_and_its_refusals_are_bounded_errors(asr_server, tiny_whisper_dir):
    recognizer = RemoteRecognizer(asr_server, model=str(tiny_whisper_dir))
    assert isinstance(recognizer, SpeechRecognizer)
    transcript = recognizer.transcribe(TONE, language="en")
    # transformers serve answers {"text": ...} only: the language asked for and one segment spanning the clip.
    assert transcript.duration_s == 1.0 and transcript.language == "en"
    assert transcript.segments == (
        () if not transcript.text else ((transcript.segments[0].__class__(0.0, 1.0, transcript.text)),)
    )
    wrong = RemoteRecognizer(asr_server, model="not-the-served-model")
    with pytest.raises(SpeechRecognizerError, match=r"^speech recognizer unavailable: .* answered 400 \(") as caught:
        wrong.transcribe(TONE)
    assert caught.value.kind is ErrorKind.UNAVAILABLE and len(str(caught.value)) < 400


@pytest.mark.timeout(SERVER_START_S + 180)
def test_the_docs_remote_server_example_runs(asr_server, tiny_whisper_dir, tiny_checkpoint, tmp_path):
    """docs/speech-in.md's remote example: its handler.py command, against this module's server."""
    text = (ROOT / "docs" / "speech-in.md").read_text()
    block = re.search(r"<!-- commands: tests/test_asr_remote.py -->\n```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    speak = next(line for line in joined.splitlines() if line.startswith("espeak-ng"))
    [command] = [line for line in joined.splitlines() if "handler.py" in line]
    port = asr_server.split(":")[2].split("/")[0]
    wav = str(tmp_path / "hi.wav")
    command = (
        command.replace("127.0.0.1:8002", f"127.0.0.1:{port}")
        .replace("/tmp/tiny-whisper", str(tiny_whisper_dir))
        .replace("/tmp/hi.wav", wav)
        .replace("checkpoints/tiny", str(tiny_checkpoint))
        .replace(".venv/bin/python", shlex.quote(sys.executable))
    )
    subprocess.run(["bash", "-c", speak.replace("/tmp/hi.wav", wav)], check=True, timeout=60)
    env = {**os.environ, "FISH_WARMUP": "false"}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speech in: remote transcription server" in result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])["output"]
    assert set(output) == {"transcript", "language", "duration_s", "segments"}, output


# --- what is sent, and what a server may answer --------------------------------------------------------------


def stub(handler) -> RemoteRecognizer:
    return RemoteRecognizer(
        "http://asr.test/v1", api_key="secret-key", model="served-name", transport=httpx.MockTransport(handler)
    )


def test_the_request_is_a_16_bit_wav_with_model_language_and_key():
    seen: dict = {}

    def answer(request: httpx.Request) -> httpx.Response:
        seen["url"], seen["auth"] = str(request.url), request.headers["authorization"]
        seen["body"] = request.read()
        return httpx.Response(
            200,
            json={
                "text": " Hello there. How are you?",
                "language": "english",
                "duration": 1.0,
                "segments": [
                    {"start": 0.0, "end": 0.4, "text": " Hello there."},
                    {"start": 0.4, "end": 9.0, "text": " How are you?"},
                    {"start": "x", "text": "malformed"},
                ],
            },
        )

    transcript = stub(answer).transcribe(TONE, language="en")
    assert seen["url"] == "http://asr.test/v1/audio/transcriptions" and seen["auth"] == "Bearer secret-key"
    body = seen["body"]
    for name, value in (("model", b"served-name"), ("language", b"en"), ("response_format", b"verbose_json")):
        assert re.search(rb'name="' + name.encode() + rb'"\r\n\r\n' + value + rb"\r\n", body), name
    wav_start = body.index(b"RIFF")
    with wave.open(io.BytesIO(body[wav_start:]), "rb") as clip:
        assert (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) == (ASR_SAMPLE_RATE, 1, 2)
        assert clip.getnframes() == TONE.size
    assert transcript.text == "Hello there. How are you?" and transcript.language == "en"
    assert [(s.start_s, s.end_s, s.text) for s in transcript.segments] == [
        (0.0, 0.4, "Hello there."),
        (0.4, 1.0, "How are you?"),
    ]  # times within the clip; the malformed one dropped


@pytest.mark.parametrize(
    "status,body,expected,kind",
    [
        (
            401,
            {"error": {"message": "Invalid API key"}},
            r"refused the API key \(401: Invalid API key\); check FISH_ASR_API_KEY",
            ErrorKind.UNAVAILABLE,
        ),
        (
            429,
            {"error": {"message": "slow down"}},
            r"busy: .* rate limiting requests \(429: slow down\)",
            ErrorKind.BUSY,
        ),
        (500, "<html>" + "x" * 100_000 + "</html>", r"answered 500 \(<html>x+…", ErrorKind.UNAVAILABLE),
        (200, "not json", r"answered something that is not a transcript", ErrorKind.UNAVAILABLE),
        (200, {"segments": []}, r"answered something that is not a transcript", ErrorKind.UNAVAILABLE),
    ],
)
def test_server_failures_are_bounded_errors(status, body, expected, kind):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    with pytest.raises(SpeechRecognizerError, match=expected) as caught:
        stub(answer).transcribe(TONE)
    assert caught.value.kind is kind and len(str(caught.value)) < 500


def test_a_language_the_server_refuses_is_a_bad_input_naming_language():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "Unsupported language: xx"}})

    with pytest.raises(UnsupportedLanguageError):
        stub(answer).transcribe(TONE, language="xx")
    transcriber = Transcriber(stub(answer), max_seconds=10, max_bytes=1 << 20)
    clip = io.BytesIO()
    with wave.open(clip, "wb") as writer:
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(ASR_SAMPLE_RATE)
        writer.writeframes((TONE * 32767).astype("<i2").tobytes())
    with pytest.raises(JobInputError, match=r"^language: the transcription server refused the language 'xx'"):
        transcriber.transcribe_bytes(base64.b64encode(clip.getvalue()).decode(), language="xx")


@pytest.mark.timeout(30)
def test_a_silent_server_times_out_and_a_closed_port_is_unreachable():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        silent = RemoteRecognizer(f"http://127.0.0.1:{port}/v1", timeout_s=0.5, connect_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(SpeechRecognizerError, match="did not answer in time"):
            silent.transcribe(TONE)
        assert time.monotonic() - started < 5
    finally:
        for connection in accepted:
            connection.close()
        listener.close()
    closed = RemoteRecognizer(f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=0.5)
    with pytest.raises(SpeechRecognizerError, match=r"cannot reach .* \(ConnectError"):
        closed.transcribe(TONE)


def test_make_transcriber_picks_the_remote_server_and_loads_no_weights(settings):
    configured = settings.model_copy(update={"asr": AsrSettings(base_url="http://asr.test/v1", model="m")})
    transcriber = make_transcriber(configured)
    assert transcriber is not None and isinstance(transcriber.recognizer, RemoteRecognizer)
    assert transcriber.description == "remote transcription server http://asr.test/v1 (model m)"
