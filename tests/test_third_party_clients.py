"""Voice-agent frameworks' Fish Audio clients, unmodified and with their defaults, against a real server.

LiveKit's plugin (`livekit-plugins-fishaudio`: HTTP `/v1/tts` and the live WebSocket) and pipecat's
`FishAudioTTSService` (the live WebSocket) pin versions the worker cannot share, so they live in their
own venv, `.venv-clients` (scripts/setup_clients_env.sh, requirements-clients.txt). Each is driven by a
small script in tests/clients/ run with that venv's python, which prints a JSON summary of what the
client received; the server is `python -m fish_worker.server` as a user starts it, on 127.0.0.1 with the
tiny checkpoint. Only the base URL, the key and (where its default is a Fish cloud voice) the voice are
set on the clients; the server caps generation at FISH_MAX_TOKENS_LIMIT frames per sentence so the
tiny random model's sentences stay short whatever the client asks.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fishaudio import FishAudio

from helpers import free_port, stop, wav_b64

ROOT = Path(__file__).resolve().parents[1]
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
DRIVERS = ROOT / "tests" / "clients"
KEY = "third-party-client-key"
TEXT = "Hello there. How are you today?"
PLUGIN_RATE = 24000  # both clients' default output: LiveKit wav 24 kHz; pipecat pcm at the pipeline's 24 kHz

if not CLIENTS_PYTHON.exists():
    pytest.skip(
        "the third-party clients' venv .venv-clients is missing (bash scripts/setup_clients_env.sh)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """`python -m fish_worker.server` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FISH_") and name != "REDIS_URL"}
    env.update(
        FISH_API_KEYS=KEY,
        FISH_CHECKPOINT_DIR=str(tiny_checkpoint),
        FISH_DEVICE="cpu",
        FISH_WARMUP="false",
        FISH_HOST="127.0.0.1",
        FISH_PORT=str(port),
        FISH_MAX_TOKENS_LIMIT="12",
        FISH_VOICES_DIR=str(tmp_path_factory.mktemp("client-voices")),
    )
    log = tmp_path_factory.mktemp("client-server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fish_worker.server"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server did not start in 120 s: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        stop(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def local_voice(server) -> str:
    """A voice saved on the server (POST /model, through the official SDK): its id."""
    with FishAudio(api_key=KEY, base_url=server) as fish:
        clip = base64.b64decode(wav_b64(seconds=1.0))
        return fish.voices.create(title="Local voice", voices=[clip], texts=["A reference."]).id


def run_client(driver: str, server: str, *args: str) -> dict:
    """tests/clients/<driver> with the clients venv's python; its JSON summary (the last line it prints)."""
    result = subprocess.run(
        [str(CLIENTS_PYTHON), str(DRIVERS / driver), "--base-url", server, "--api-key", KEY, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{driver} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_livekit_default_voice_is_a_404_that_says_how_to_choose_a_local_one(server):
    """The plugin's default voice_id is a Fish cloud voice: HTTP says 404; the live socket says what to do."""
    (http,) = run_client("livekit_fish.py", server, "--mode", "http")["requests"]
    assert not http["ok"] and http["status"] == 404  # the plugin reports the status line only
    for streamed in run_client("livekit_fish.py", server, "--mode", "stream")["requests"]:
        assert not streamed["ok"] and "Fish cloud voices are not here" in streamed["body"]
        assert "GET /model" in streamed["body"] and "POST /model" in streamed["body"]


def test_livekit_http_synthesis_with_a_local_voice(server, local_voice):
    summary = run_client("livekit_fish.py", server, "--mode", "http", "--voice", local_voice)
    (request,) = summary["requests"]
    assert request["ok"] and request["error"] is None, request
    assert request["sample_rate"] == summary["plugin_sample_rate"] == PLUGIN_RATE and request["samples"] > 0


def test_livekit_streams_two_turns_on_its_pooled_websocket(server, local_voice):
    """The plugin pools one /v1/tts/live connection and runs each turn's session on it."""
    summary = run_client("livekit_fish.py", server, "--mode", "stream", "--voice", local_voice)
    assert len(summary["requests"]) == 2
    for turn in summary["requests"]:
        assert turn["ok"] and turn["error"] is None, turn
        assert turn["sample_rate"] == PLUGIN_RATE and turn["samples"] > 0


def test_pipecat_defaults_speak_two_turns_on_one_websocket(server):
    """Defaults throughout (pcm, no voice: the server's default voice); only the URL attribute and the key set."""
    summary = run_client("pipecat_fish.py", server, "--text", TEXT, "--text", "Fine, thanks.")
    assert summary["errors"] == []
    assert len(summary["turns"]) == 2
    for turn in summary["turns"]:
        assert turn["ok"] and turn["sample_rate"] == summary["service_sample_rate"] == PLUGIN_RATE, turn


def test_pipecat_with_a_local_voice(server, local_voice):
    summary = run_client("pipecat_fish.py", server, "--voice", local_voice, "--text", TEXT)
    assert summary["errors"] == [] and summary["turns"][0]["ok"], summary
