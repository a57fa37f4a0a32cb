"""`python -m fish_worker.server` as a RunPod load-balancing worker, through real uvicorn servers on
127.0.0.1: /ping states while loading, ready and failed; /run plain, NDJSON (the example clients)
and Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from fish_worker.server import create_app
from fish_worker.settings import ServerSettings
from fish_worker.server.__main__ import LoadBalancingServer
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "lb-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JOB = {"message": "Streaming to a client. Second sentence here.", "max_tokens": 5, "seed": 3}


def example_client():
    """examples/stream_client.py, imported from its file (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("stream_client", ROOT / "examples" / "stream_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Running:
    """A LoadBalancingServer in a thread with its own event loop; stopped on exit."""

    def __init__(self, build, port_health: bool = False):
        self.port = free_port()
        self.health_port = free_port() if port_health else self.port
        settings = ServerSettings(host="127.0.0.1", port=self.port, port_health=self.health_port, api_keys=KEY)
        self.server = LoadBalancingServer(build, settings, log_level="warning")
        self.thread = threading.Thread(target=asyncio.run, args=(self.server.serve(),), daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not all(s.started for s in self.server.servers):
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.thread.join(timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ping(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/ping", timeout=5)


def wait_for_ping(server: Running, status: int, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (response := server.ping()).status_code != status:
        assert time.monotonic() < deadline, f"/ping stayed {response.status_code}"
        time.sleep(0.05)
    return response


@pytest.mark.timeout(60)
@pytest.mark.parametrize("separate_health_port", [False, True])
def test_ping_is_204_while_loading_then_200_and_the_port_is_open_at_once(separate_health_port):
    loaded = threading.Event()

    def build():
        loaded.wait(30)  # models "loading" until the test says so
        from fastapi import FastAPI

        app = FastAPI()
        app.post("/run")(lambda: {"status": "success"})
        return app

    with Running(build, port_health=separate_health_port) as server:
        assert server.ping().status_code == 204  # port open, still initializing
        busy = httpx.post(f"{server.url}/run", json={"input": {}}, timeout=5)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "10" and "loading" in busy.json()["error"]
        loaded.set()
        assert wait_for_ping(server, 200).json() == {"status": "ready"}
        assert httpx.post(f"{server.url}/run", timeout=5).json() == {"status": "success"}
        if separate_health_port:
            assert httpx.get(f"http://127.0.0.1:{server.health_port}/run", timeout=5).status_code == 404


@pytest.mark.timeout(60)
def test_ping_is_503_with_the_reason_when_loading_fails():
    def build():
        raise RuntimeError("no checkpoint at /nowhere")

    with Running(build) as server:
        response = wait_for_ping(server, 503)
        assert response.json() == {"status": "failed", "error": "RuntimeError: no checkpoint at /nowhere"}
        refused = httpx.post(f"{server.url}/run", json={"input": {}}, timeout=5)
        assert refused.status_code == 503 and "no checkpoint" in refused.json()["error"]


@pytest.fixture(scope="module")
def server(runner, app_settings):
    with Running(lambda: create_app(runner, app_settings(api_keys=KEY))) as running:
        wait_for_ping(running, 200)
        yield running


@pytest.mark.timeout(120)
def test_plain_run_answers_the_seed_contract(server):
    response = httpx.post(f"{server.url}/run", json={"input": JOB}, headers=AUTH, timeout=60)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success"
    assert body["output"]["text"] == JOB["message"] and len(body["output"]["audio"]) == 2 * 5 * 2048


@pytest.mark.timeout(120)
def test_python_example_client_streams_a_playable_wav(server):
    out = io.BytesIO()
    summary = example_client().save_stream(server.url, JOB["message"], out, KEY, "wav", max_tokens=5, seed=3)
    samples, rate = sf.read(io.BytesIO(out.getvalue()))
    assert rate == 44100 and len(samples) == 2 * 5 * 2048
    assert summary["text"] == JOB["message"] and summary["chunks"] >= 2 and summary["bytes"] == len(out.getvalue())


@pytest.mark.timeout(120)
def test_python_example_client_raises_the_jobs_error(server):
    with pytest.raises(RuntimeError, match="HTTP 400: .*temperature"):
        list(example_client().stream_chunks(server.url, {"message": "hi", "temperature": 9}, KEY))


@pytest.mark.timeout(120)
def test_event_stream_carries_the_same_objects(server):
    job = {"input": {**JOB, "stream": True, "audio_format": "pcm16"}}
    with httpx.stream(
        "POST", f"{server.url}/run", json=job, timeout=60, headers={**AUTH, "Accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [json.loads(block.removeprefix("data: ")) for block in text.split("\n\n") if block.strip()]
    assert all(e["status"] == "success" for e in events)
    assert sum(len(base64.b64decode(e["output"]["audio"])) for e in events) == 2 * 2 * 5 * 2048
    assert " ".join(e["output"]["text"] for e in events if e["output"]["text"]) == JOB["message"]


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_example_client_streams_a_playable_wav(server, tmp_path):
    out = tmp_path / "speech.wav"
    result = subprocess.run(
        [
            "node",
            str(ROOT / "examples" / "stream_client.mjs"),
            "--url",
            server.url,
            "--text",
            JOB["message"],
            "--out",
            str(out),
            "--key",
            KEY,
            "--max-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    samples, rate = sf.read(out)
    assert rate == 44100 and len(samples) == 2 * 5 * 2048 and summary["bytes"] == out.stat().st_size
