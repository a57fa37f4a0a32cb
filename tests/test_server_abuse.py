"""A real uvicorn server probed as an attacker would: unauthenticated and oversized uploads, slow clients.

Raw sockets, so the test controls exactly what is sent and when. The server runs in this process,
so its memory and file descriptors are this process's.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fish_worker.server import create_app
from fish_worker.server.protocol import uvicorn_options
from helpers import serve_app

KEY = "abuse-test-key"
LIMITS = dict(api_keys=KEY, max_body_bytes=1_000_000, header_timeout_s=1.0, body_timeout_s=1.0)
MB = b"x" * 1_000_000


@pytest.fixture(scope="module")
def address(runner, app_settings):
    settings = app_settings(**LIMITS)
    with serve_app(create_app(runner, settings), **uvicorn_options(settings.server)) as address:
        yield address


def connect(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # small buffers: what is sent is read
    return sock


def headers(length: int | None, key: str | None = None, path: str = "/run") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            raise ConnectionError(f"closed without an answer after {data!r}")
        data += part
    return int(data.split(b" ", 2)[1])


def push(sock: socket.socket, total: int, chunked: bool = False) -> int:
    """Send up to `total` bytes of body; the bytes sent before the server hung up."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (len(MB), MB) if chunked else MB)
            sent += len(MB)
    except OSError:
        pass
    return sent


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(120)
def test_unauthenticated_uploads_are_refused_unread_and_memory_stays_flat(address):
    peak, done = [rss_bytes()], threading.Event()
    baseline = peak[0]

    def sample():
        while not done.is_set():
            peak.append(rss_bytes())
            time.sleep(0.01)

    results = []

    def attacker():
        with connect(address) as sock:
            sock.sendall(headers(100_000_000))  # 100 MB announced, no key
            status = read_status(sock)  # answered from the headers alone
            results.append((status, push(sock, 100_000_000)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    attackers = [threading.Thread(target=attacker) for _ in range(5)]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(60)
    done.set()
    sampler.join()
    assert [status for status, _ in results] == [401] * 5
    assert all(sent < 20_000_000 for _, sent in results), results  # the server hung up; 100 MB never went in
    assert max(peak) - baseline < 50_000_000  # 500 MB thrown at it, memory flat


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_bodies_are_413_before_being_read_whole(address, chunked):
    with connect(address) as sock:
        sock.sendall(headers(None if chunked else 100_000_000, KEY))
        if chunked:
            sent = push(sock, 100_000_000, chunked=True)  # refused at the chunk that crosses 1 MB
            assert read_status(sock) == 413 and sent < 20_000_000
        else:
            assert read_status(sock) == 413  # from Content-Length, nothing read
            assert closed_by_server(sock)


@pytest.mark.timeout(60)
def test_slow_headers_and_idle_connections_are_dropped(address):
    idle = connect(address)
    slow = connect(address)
    started = time.monotonic()
    try:
        for byte in b"POST /run HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + KEY.encode():
            slow.sendall(bytes([byte]))
            time.sleep(0.25)
        pytest.fail("the slow client was never dropped")
    except OSError:
        pass
    assert time.monotonic() - started < 6  # header_timeout_s is 1 s (slack for a loaded machine)
    assert closed_by_server(idle)
    idle.close()
    slow.close()


@pytest.mark.timeout(60)
def test_a_slow_body_is_answered_408_and_dropped(address):
    with connect(address) as sock:
        sock.sendall(headers(100, KEY))
        started = time.monotonic()
        sock.sendall(b"{")
        time.sleep(0.5)
        sock.sendall(b'"')
        assert read_status(sock) == 408 and time.monotonic() - started < 5  # body_timeout_s is 1 s
        assert closed_by_server(sock)


@pytest.mark.timeout(60)
def test_half_sent_requests_do_not_hold_descriptors(address):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    clients = [connect(address) for _ in range(200)]
    for sock in clients:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: te")
    held = 0
    for _ in range(5):
        time.sleep(0.1)
        held = max(held, open_fds())
    assert held >= before + 350  # both ends of (almost) every connection are in this process
    deadline = time.monotonic() + 15  # header_timeout_s is 1 s; generous for a loaded machine
    while open_fds() > before + 200 + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds() <= before + 200 + 5  # the server closed its ends; only the clients' remain
    assert all(closed_by_server(sock) for sock in clients)
    for sock in clients:
        sock.close()


@pytest.mark.timeout(60)
def test_a_well_behaved_request_still_works(address):
    with connect(address) as sock:
        body = b'{"input": {"action": "list_voices"}}'
        sock.sendall(headers(len(body), KEY) + body)
        assert read_status(sock) == 200
