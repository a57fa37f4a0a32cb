"""Admission before parsing, header caps, and actions that need no generation slot, on a real uvicorn.

Raw sockets where the test must control what is sent and when (a body held half-sent keeps its
permit; headers sent whole or in pieces); httpx for the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
import tracemalloc

import httpx
import pytest
import uvicorn

from fish_worker.server import create_app
from fish_worker.server.protocol import uvicorn_options
from fish_worker.server.dependencies import body_budget_of, limiter_of

ALICE, BOB = "key-of-alice", "key-of-bob"
KEYS = f"alice:{ALICE},bob:{BOB}"
JOB = {"message": "Hello there.", "max_tokens": 4, "seed": 1}
# One body may be 1 MB; 1.5 MB of bodies in flight on the server, 1 MB per tenant.
BUDGET = dict(
    api_keys=KEYS,
    max_body_bytes=1_000_000,
    body_budget_bytes=1_500_000,
    body_budget_per_tenant_bytes=1_000_000,
    body_permit_wait_s=0.5,
    body_timeout_s=20.0,
    header_timeout_s=20.0,
    retry_after_s=3,
)


def serve(app, server_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(server_settings))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, ("127.0.0.1", port)


@pytest.fixture(scope="module")
def budget_server(runner, app_settings):
    settings = app_settings(**BUDGET)
    app = create_app(runner, settings)
    server, thread, address = serve(app, settings.server)
    yield app, address
    server.should_exit = True
    thread.join(timeout=10)


def request_head(
    path: str = "/run", key: str | None = ALICE, length: int | None = None, extra: list[str] | None = None
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *(extra or [])]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError(f"closed without an answer after {data[:200]!r}")
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return int(lines[0].split(" ", 2)[1]), headers, body


def held_body(address, key: str, length: int) -> socket.socket:
    """A request whose body is announced and started but never finished: it holds its permit."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(request_head(key=key, length=length) + b'{"input": {"message": "')
    return sock


def wait_for(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def post(address, key: str, body: dict | bytes, path: str = "/run") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"http://{address[0]}:{address[1]}{path}",
        content=content,
        timeout=60,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


# ---- body budget --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_tenant_over_its_share_waits_then_gets_429_unread_while_others_go_on(budget_server):
    app, address = budget_server
    budget = body_budget_of(app)
    holding = held_body(address, ALICE, 900_000)
    try:
        wait_for(lambda: budget.in_use == 900_000)
        started = time.monotonic()
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request_head(key=ALICE, length=200_000))  # headers only: answered without its body
            status, headers, body = read_response(sock)
        waited = time.monotonic() - started
        assert status == 429 and headers["retry-after"] == "3" and headers["connection"] == "close"
        assert "FISH_BODY_BUDGET_PER_TENANT_BYTES" in json.loads(body)["error"]
        assert 0.4 < waited < 10  # it waited for a permit (body_permit_wait_s), then gave up
        assert post(address, BOB, {"input": JOB}).status_code == 200  # another tenant is not held up
    finally:
        holding.close()
    wait_for(lambda: budget.in_use == 0)  # the abandoned body's permit came back
    assert post(address, ALICE, {"input": JOB}).status_code == 200


@pytest.mark.timeout(120)
def test_a_full_server_refuses_a_large_body_but_a_small_one_passes(budget_server):
    app, address = budget_server
    budget = body_budget_of(app)
    holding = held_body(address, ALICE, 900_000)
    try:
        wait_for(lambda: budget.in_use == 900_000)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request_head(key=BOB, length=700_000))  # fits Bob's share, not the server's
            status, headers, body = read_response(sock)
        assert status == 429 and headers["retry-after"] == "3"
        assert "server busy" in json.loads(body)["error"] and "FISH_BODY_BUDGET_BYTES" in json.loads(body)["error"]
        assert post(address, BOB, {"input": JOB}).status_code == 200  # a small body still fits
        # Unauthenticated bodies never reach the budget: 401 from the headers, at once.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request_head(key=None, length=900_000))
            assert read_response(sock)[0] == 401
    finally:
        holding.close()
    wait_for(lambda: budget.in_use == 0)


@pytest.mark.timeout(120)
def test_a_waiting_body_is_admitted_when_a_permit_comes_back(runner, app_settings):
    settings = app_settings(**{**BUDGET, "body_permit_wait_s": 30.0})
    app = create_app(runner, settings)
    server, thread, address = serve(app, settings.server)
    try:
        holding = held_body(address, ALICE, 900_000)
        wait_for(lambda: body_budget_of(app).in_use == 900_000)
        answers = []
        padded = {"input": JOB, "padding": "x" * 200_000}  # 900 kB + 200 kB: over Alice's 1 MB share
        waiter = threading.Thread(target=lambda: answers.append(post(address, ALICE, padded)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # waiting for Alice's permit
        holding.close()
        waiter.join(60)
        assert answers[0].status_code == 200
        wait_for(lambda: body_budget_of(app).in_use == 0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.timeout(200)
def test_stress_random_bodies_and_aborts_every_request_ends_and_every_byte_is_given_back(budget_server):
    app, address = budget_server
    rng = random.Random(7)
    outcomes: list[int | str] = []

    def client(seed: int) -> None:
        local = random.Random(seed)
        key = local.choice([ALICE, BOB])
        kind = local.choice(["bad json", "valid", "abort", "chunked"])
        size = local.randint(10, 950_000)
        try:
            if kind == "valid":
                outcomes.append(post(address, key, {"input": JOB}).status_code)
            elif kind == "bad json":
                outcomes.append(post(address, key, b"{" + b"x" * size).status_code)
            elif kind == "abort":  # announces a body, sends part of it, hangs up
                with held_body(address, key, size):
                    time.sleep(local.random() * 0.3)
                outcomes.append("aborted")
            else:  # chunked: claims the largest body (1 MB, cut to the tenant's share)
                with socket.create_connection(address, timeout=30) as sock:
                    sock.sendall(request_head(key=key) + b"%x\r\n%s\r\n0\r\n\r\n" % (size, b"[" * size))
                    outcomes.append(read_response(sock)[0])
        except OSError as exc:  # a 429 answered before its body was sent may reset the connection
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(rng.random(),)) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads) and len(outcomes) == 40
    assert set(outcomes) <= {200, 400, 429, "aborted", "ConnectionResetError", "BrokenPipeError"}, outcomes
    wait_for(lambda: body_budget_of(app).in_use == 0)
    assert post(address, ALICE, {"input": JOB}).status_code == 200


LONG_JOB = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}


@pytest.mark.timeout(200)
def test_concurrent_maximal_bodies_take_no_more_memory_than_the_budget(runner, app_settings):
    # The one generation slot is busy, so /run jobs queue; 20 bodies of 4 MB arrive at once (each is
    # refused as bad audio once it runs). Unbudgeted, all 20 are read, parsed and queued with their
    # input: ~20 bodies' worth of memory. With an 8 MB budget only two are read; the rest wait unread.
    # Python's own peak is measured (tracemalloc), not RSS, which says more about the allocator's arenas.
    settings = app_settings(
        api_keys=KEYS,
        max_body_bytes=4_000_000,
        body_permit_wait_s=120.0,
        max_concurrent_jobs=1,
        body_budget_bytes=int(os.environ.get("FISH_TEST_BODY_BUDGET", 8_000_000)),
    )
    app = create_app(runner, settings)
    server, thread, address = serve(app, settings.server)
    base = f"http://{address[0]}:{address[1]}"
    body = json.dumps({"input": {**JOB, "reference_audio": "QUJD" * 990_000}}).encode()
    statuses = []

    def send(key: str) -> None:  # raw: the client's side copies nothing (httpx would, in this process)
        with socket.create_connection(address, timeout=150) as sock:
            sock.sendall(request_head(key=key, length=len(body)))
            sock.sendall(body)
            statuses.append(read_response(sock)[0])

    tracemalloc.start()
    try:
        auth = {"Authorization": f"Bearer {BOB}"}
        long = httpx.post(f"{base}/v2/ep/run", json={"input": LONG_JOB}, headers=auth).json()
        wait_for(lambda: limiter_of(app).running == 1)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        senders = [threading.Thread(target=send, args=([ALICE, BOB][i % 2],)) for i in range(20)]
        for sender in senders:
            sender.start()
        time.sleep(6)  # every body arrives; those read are parsed and queued behind the long job
        peak = tracemalloc.get_traced_memory()[1] - baseline
        httpx.post(f"{base}/v2/ep/cancel/{long['id']}", headers=auth)
        for sender in senders:
            sender.join(150)
    finally:
        tracemalloc.stop()
        server.should_exit = True
        thread.join(timeout=10)
    assert statuses == [400] * 20  # every body was read in the end, and refused for its audio
    assert peak < 50_000_000, peak  # unbudgeted: > 150 MB


# ---- header cap ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [20_000, 100_000])
@pytest.mark.parametrize("pieces", [1, 40])
def test_headers_over_16_kib_are_431_however_they_arrive(budget_server, size, pieces):
    _, address = budget_server
    head = request_head(key=ALICE, length=2, extra=[f"X-Padding: {'p' * size}"]) + b"{}"
    with socket.create_connection(address, timeout=10) as sock:
        if pieces == 1:
            sock.sendall(head)  # all in one write: h11 parses it whole and its own limit never fires
        else:
            step = -(-len(head) // pieces)
            try:
                for start in range(0, len(head), step):
                    sock.sendall(head[start : start + step])
                    time.sleep(0.005)
            except OSError:  # refused (and closed) before the rest was sent
                pass
        status, headers, _ = read_response(sock)
    assert status == 431 and headers["connection"] == "close"


@pytest.mark.timeout(60)
def test_headers_just_under_the_cap_pass(budget_server):
    _, address = budget_server
    with socket.create_connection(address, timeout=30) as sock:
        body = json.dumps({"input": JOB}).encode()
        sock.sendall(request_head(key=ALICE, length=len(body), extra=[f"X-Padding: {'p' * 15_000}"]) + body)
        assert read_response(sock)[0] == 200


# ---- actions without a generation slot ----------------------------------------------------------


@pytest.mark.timeout(120)
def test_list_voices_answers_at_once_while_every_slot_generates_another_tenants_jobs(runner, app_settings):
    app = create_app(runner, app_settings(api_keys=KEYS, max_concurrent_jobs=2))
    long_job = {"message": " ".join(f"Sentence number {i}." for i in range(40)), "max_tokens": 200, "stream": True}
    auth = {"Authorization": f"Bearer {BOB}"}

    async def steps(client):
        jobs = [(await client.post("/v2/ep/run", json={"input": long_job}, headers=auth)).json() for _ in range(4)]
        for _ in range(200):  # both slots busy, two more waiting
            if limiter_of(app).running == 2:
                break
            await asyncio.sleep(0.05)
        assert limiter_of(app).running == 2
        started = time.monotonic()
        alice = {"Authorization": f"Bearer {ALICE}"}
        listed = await client.post("/run", json={"input": {"action": "list_voices"}}, headers=alice)
        deleted = await client.post(
            "/run", json={"input": {"action": "delete_voice", "voice_id": "none"}}, headers=alice
        )
        ended = await client.post(
            "/run", json={"input": {"action": "end_conversation", "conversation_id": "c1"}}, headers=alice
        )
        took = time.monotonic() - started
        for job in jobs:
            await client.post(f"/v2/ep/cancel/{job['id']}", headers=auth)
        return listed, deleted, ended, took

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await steps(client)

    listed, deleted, ended, took = asyncio.run(go())
    assert listed.status_code == 200 and listed.json()["output"]["voices"] == []
    assert deleted.status_code == 404 and ended.status_code == 200
    assert took < 5  # no slot waited for (a long job here runs for far longer)
