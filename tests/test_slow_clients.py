"""Clients that stop reading, hang up early, or meet a limit mid-stream, against a real uvicorn server.

Raw sockets with a tiny receive buffer that never read: the server's sends must give up after
FISH_SEND_TIMEOUT_S, disconnect the client and give its place back, on every door. Clients that hang
up before a whole (non-streamed) answer is ready must stop its generation. A job that meets the
per-job frame cap mid-stream ends the stream the door's documented way, with no traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import socket
import threading
import time
import wave

import httpx
import ormsgpack
import pytest

from fish_worker.server import create_app
from fish_worker.server.protocol import uvicorn_options
from fish_worker.server.dependencies import limiter_of
from helpers import serve_app

KEY = "slow-client-key"
SEND_TIMEOUT_S = 1.0
TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h): a reset socket leaves it
LONG_TEXT = " ".join(f"This is sentence number {i} of a long text." for i in range(60))

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(runner, app_settings):
    """(address, limiter): a real uvicorn, configured as `python -m fish_worker.server` configures it."""
    settings = app_settings(api_keys=KEY, send_timeout_s=SEND_TIMEOUT_S, live_idle_timeout_s=30, max_queued_jobs=4)
    app = create_app(runner, settings)
    with serve_app(app, **uvicorn_options(settings.server)) as address:
        yield address, limiter_of(app)


def never_reader(address) -> socket.socket:
    """A connection whose receive buffer is as small as the kernel allows; the test never reads it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: it sets the window
    sock.settimeout(10)
    sock.connect(address)
    return sock


def post(sock: socket.socket, path: str, body: dict, extra: str = "") -> None:
    data = json.dumps(body).encode()
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
        ).encode()
        + data
    )


def wait_released(limiter, within_s: float) -> float:
    """Seconds until no job is admitted; fails after `within_s`."""
    began = time.monotonic()
    while limiter.admitted:
        assert time.monotonic() - began < within_s, f"{limiter.admitted} job(s) still admitted after {within_s} s"
        time.sleep(0.05)
    return time.monotonic() - began


def wait_admitted(limiter, count: int) -> None:
    deadline = time.monotonic() + 10
    while limiter.admitted < count:
        assert time.monotonic() < deadline, f"{limiter.admitted} of {count} jobs admitted"
        time.sleep(0.01)


def dropped_by_server(sock: socket.socket, within_s: float) -> bool:
    """True once the server has reset the connection, seen without reading (reading would unblock it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED:
            return True
        time.sleep(0.05)
    return False


def ws_frame(payload: bytes) -> bytes:
    """One masked binary frame, as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    head = b"\x82" + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_open(address) -> socket.socket:
    sock = never_reader(address)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/tts/live HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # byte by byte: nothing after the handshake is read
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def test_a_live_session_that_is_never_read_is_dropped_and_its_place_freed(server, caplog):
    address, limiter = server
    wait_released(limiter, 10)
    sock = ws_open(address)
    start = {"event": "start", "request": {"text": LONG_TEXT[:1500], "format": "pcm", "max_new_tokens": 200}}
    sock.sendall(ws_frame(ormsgpack.packb(start)) + ws_frame(ormsgpack.packb({"event": "stop"})))
    wait_admitted(limiter, 1)
    with caplog.at_level(logging.WARNING, logger="fish_worker.server.protocol"):
        waited = wait_released(limiter, 40)  # audio fills the buffers, then one send waits SEND_TIMEOUT_S
        assert dropped_by_server(sock, 10)
    sock.close()
    assert "read nothing for 1 s: disconnected (FISH_SEND_TIMEOUT_S)" in caplog.text
    print(f"live never-reader: place freed after {waited:.1f} s")


def synthesis_threads() -> int:
    return sum(t.name == "synthesis" for t in threading.enumerate())


STREAMED = {  # every streamed HTTP door: path, body
    "seed /run stream": ("/run", {"input": {"message": LONG_TEXT[:1900], "stream": True, "max_tokens": 200}}),
    "openai stream": (
        "/v1/audio/speech",
        {"input": LONG_TEXT[:1900], "response_format": "wav", "max_tokens": 200},
    ),  # streamed by default
    "fish /v1/tts": ("/v1/tts", {"text": LONG_TEXT[:1900], "format": "wav", "max_new_tokens": 200}),
}


def test_streamed_answers_that_are_never_read_are_dropped_and_their_places_freed(server, caplog):
    address, limiter = server
    wait_released(limiter, 10)
    socks = []
    for path, body in STREAMED.values():  # all at once: each door's never-reader alongside the others
        socks.append(never_reader(address))
        post(socks[-1], path, body)
    wait_admitted(limiter, len(STREAMED))
    with caplog.at_level(logging.WARNING, logger="fish_worker.server.protocol"):
        waited = wait_released(limiter, 60)
        assert all(dropped_by_server(sock, 10) for sock in socks)
    for sock in socks:
        sock.close()
    assert caplog.text.count("(FISH_SEND_TIMEOUT_S)") >= len(STREAMED)
    deadline = time.monotonic() + 5
    while synthesis_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert synthesis_threads() == 0
    print(f"streamed never-readers: places freed after {waited:.1f} s")


WHOLE = {  # every door that answers only once the work is done (or its first audio, for /v1/tts)
    "seed /run": ("/run", {"input": {"message": LONG_TEXT[:1900], "max_tokens": 1000}}),
    "/v2 runsync": (
        "/v2/any/runsync",
        {"input": {"message": LONG_TEXT[:1900], "max_tokens": 1000, "audio_format": "mp3"}},
    ),  # within /runsync's result limit
    "openai whole file": (
        "/v1/audio/speech",
        {"input": LONG_TEXT[:1900], "response_format": "wav", "max_tokens": 1000, "stream": False},
    ),
    # The first sentence is awaited whole before the answer starts (a bad voice is still a 400).
    "fish /v1/tts": (
        "/v1/tts",
        {
            "text": "A first sentence far longer than the rest, " * 6,
            "format": "wav",
            "max_new_tokens": 2000,
            "chunk_length": 300,
        },
    ),
}


@pytest.mark.parametrize("door", WHOLE)
def test_a_client_that_hangs_up_before_a_whole_answer_stops_its_generation(
    server, door, server_log, service, monkeypatch
):
    caplog = server_log
    # /v1/tts: its first audio (what is awaited before answering) comes at the first sentence's end.
    monkeypatch.setattr(service, "limits", dataclasses.replace(service.limits, stream_first_frames=100_000))
    address, limiter = server
    wait_released(limiter, 10)
    path, body = WHOLE[door]
    sock = socket.create_connection(address, timeout=10)
    post(sock, path, body)
    deadline = time.monotonic() + 20
    while not synthesis_threads():  # generating
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    time.sleep(0.5)
    caplog.set_level(logging.INFO, logger="fish_worker")
    caplog.clear()
    sock.setblocking(False)
    try:  # the model may end /v1/tts's first sentence at once: its answer has begun, and streams
        answered = bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        answered = False
    sock.close()
    waited = wait_released(limiter, 3)  # the place comes back at once
    deadline = time.monotonic() + 15  # a codec decode already running finishes (seconds on a busy CPU)
    while synthesis_threads():
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.02)
    if not answered or door != "fish /v1/tts":
        assert "the client left before its answer was ready; its generation was stopped" in caplog.text
    finished = [r for r in caplog.records if r.name == "fish_worker.tts.service" and "frames in" in r.message]
    assert len(finished) <= 1, [r.message for r in finished]  # at most the sentence whose decode was running
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text
    print(f"{door}: place freed {waited:.2f} s after the client left")


# ---- limits met mid-stream, and nesting bombs ------------------------------------------------------------


@pytest.fixture
def server_log(caplog):
    """Everything logged, uvicorn's own errors ("Exception in ASGI application") included."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    uvicorn_errors.removeHandler(caplog.handler)


def http(server) -> httpx.Client:
    (host, port), _ = server
    return httpx.Client(base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


CAP_TEXT = " ".join(f"Short sentence number {i} here." for i in range(8))  # far more than 12 frames


def test_the_frame_cap_mid_stream_ends_each_door_as_documented(server, server_log, service, monkeypatch):
    monkeypatch.setattr(service, "limits", dataclasses.replace(service.limits, max_job_frames=12))
    cap = "the speech reached the per-job limit of 12 codec frames"
    with http(server) as client:
        fish = client.post("/v1/tts", json={"text": CAP_TEXT, "format": "wav", "max_new_tokens": 8})
        raw = client.post("/v1/audio/speech", json={"input": CAP_TEXT, "response_format": "wav", "max_tokens": 8})
        sse = client.post(
            "/v1/audio/speech",
            json={"input": CAP_TEXT, "stream_format": "sse", "max_tokens": 8, "response_format": "wav"},
        )
        whole = client.post(
            "/v1/audio/speech", json={"input": CAP_TEXT, "response_format": "wav", "max_tokens": 8, "stream": False}
        )
    # Raw audio bodies: the status went out first, so the file ends, complete, at the cap.
    for answer in (fish, raw):
        assert answer.status_code == 200
        with wave.open(io.BytesIO(answer.content)) as w:
            assert w.readframes(w.getnframes())  # a readable file with the audio up to the cap
    # SSE: OpenAI's error event in place of speech.audio.done.
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert sse.status_code == 200 and events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and cap in events[-1]["error"]["message"]
    assert events[-1]["error"]["param"] == "input" and "speech.audio.done" not in sse.text
    # A whole file is never passed off as the full text.
    assert whole.status_code == 400 and cap in whole.json()["error"]["message"]
    assert "Exception in ASGI application" not in server_log.text and "Traceback" not in server_log.text
    assert server_log.text.count("ended early, its audio complete up to there") == 3


NESTED = [
    ("application/json", b"[" * 100_000, "body: is not valid JSON: nested too deep"),
    ("text/plain", b"[" * 100_000, "body: is not valid JSON: nested too deep"),
    ("application/msgpack", b"\x91" * 100_000, "body: is not valid msgpack"),
]


@pytest.mark.parametrize("content_type, body, message", NESTED, ids=[c for c, _, _ in NESTED])
def test_nesting_bombs_on_the_fish_door_are_400(server, server_log, content_type, body, message):
    with http(server) as client:
        answer = client.post("/v1/tts", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 400 and answer.json() == {"status": 400, "message": message}
    assert "Traceback" not in server_log.text


LIVE_NESTED = [
    ({"bytes": b"\x91" * 100_000}, "event: is not valid msgpack (or JSON)"),
    ({"text": "[" * 100_000}, "event: is not valid JSON: nested too deep"),
]


@pytest.mark.parametrize("message, said", LIVE_NESTED, ids=["msgpack", "json"])
def test_a_nesting_bomb_on_the_live_socket_ends_the_session_with_a_message(server, server_log, message, said):
    from httpx_ws import connect_ws

    with http(server) as client, connect_ws("/v1/tts/live", client=client) as ws:
        ws.send_bytes(message["bytes"]) if "bytes" in message else ws.send_text(message["text"])
        finish = ormsgpack.unpackb(ws.receive_bytes(timeout=30))
    assert finish == {"event": "finish", "reason": "error", "message": said}
    assert "Traceback" not in server_log.text
