"""Three `python -m fish_worker.server` replicas behind nginx, sharing Redis and a voices directory.

The deployment of deploy/compose.yaml on 127.0.0.1: real redis-server, real replicas on the tiny
checkpoint, and nginx running deploy/nginx.conf itself (only its addresses changed). Requests go
through the balancer (round-robin: consecutive requests land on different replicas) and straight to
each replica, with real clients (runpod, openai, fishaudio). The last test kills a replica mid-job.
Select with `-m replicas` (`pytest -q -m replicas tests/test_replicas.py`); see docs/scaling.md.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis
import runpod
from fishaudio import FishAudio
from fishaudio.types import TTSConfig
from helpers import decode_ffmpeg, free_port, stop, wav_b64

from fish_worker.server.redis_jobs import KEY_PREFIX, LOST_ERROR, SHUTDOWN_ERROR

pytestmark = pytest.mark.replicas

ROOT = Path(__file__).resolve().parents[1]
KEY = "replica-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LEASE_S = 2.0
REPLICA_ENV = {
    "FISH_MAX_CONCURRENCY": "2",
    "FISH_MAX_QUEUED_JOBS": "16",
    "FISH_MAX_QUEUED_JOBS_PER_TENANT": "12",
    "FISH_JOB_LEASE_S": str(LEASE_S),
    "FISH_WARMUP": "false",
    "FISH_DEVICE": "cpu",
    "FISH_DOWNLOAD_MISSING": "false",
    "FISH_API_KEYS": f"alice:{KEY}",
    "FISH_LOG_LEVEL": "WARNING",
    "FISH_HOST": "127.0.0.1",
    "TQDM_DISABLE": "1",
    "MALLOC_ARENA_MAX": "2",
}
SHORT = {"max_tokens": 6, "seed": 3, "audio_format": "wav"}
LONG_JOB = {"message": " ".join(f"This is sentence number {i}." for i in range(4)), "max_tokens": 150, "seed": 1}


@dataclass
class Replica:
    process: subprocess.Popen
    url: str
    log_path: Path


@dataclass
class Cluster:
    url: str  # the balancer
    replicas: list[Replica]
    redis_url: str
    nginx: subprocess.Popen

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.poll() is None]


def balancer_config(ports: list[int], listen: int) -> str:
    """deploy/nginx.conf with its addresses on 127.0.0.1: nothing else changes."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "listen 8080;" in text and all(f"worker-{i + 1}:8000" in text for i in range(len(ports)))
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    for i, port in enumerate(ports):
        text = text.replace(f"worker-{i + 1}:8000", f"127.0.0.1:{port}")
    return text


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready within {timeout_s:g} s: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint, redis_server, tmp_path_factory):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); the replica test runs a real balancer")
    workdir = tmp_path_factory.mktemp("replicas")
    env = {
        **os.environ,
        **REPLICA_ENV,
        "FISH_CHECKPOINT_DIR": str(tiny_checkpoint),
        "REDIS_URL": redis_server,
        "FISH_VOICES_DIR": str(workdir / "voices"),
    }  # one directory for all, as the compose file's volume
    replicas = []
    for n in range(3):
        port, log_path = free_port(), workdir / f"replica-{n}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fish_worker.server"],
                cwd=ROOT,
                env={**env, "FISH_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        replicas.append(Replica(process, f"http://127.0.0.1:{port}", log_path))
    listen = free_port()
    (workdir / "nginx.conf").write_text(balancer_config([int(r.url.rsplit(":", 1)[1]) for r in replicas], listen))
    proxy = subprocess.Popen(
        [
            nginx,
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-e",
            str(workdir / "nginx-error.log"),
            "-g",
            f"daemon off; pid {workdir / 'nginx.pid'};",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    started = Cluster(f"http://127.0.0.1:{listen}", replicas, redis_server, proxy)
    try:
        for replica in replicas:
            wait_ready(replica.url, replica.process, replica.log_path)
        wait_ready(started.url, proxy, workdir / "nginx-error.log", timeout_s=20)
        yield started
    finally:
        for process in [proxy] + [r.process for r in replicas]:
            stop(process)
    for replica in replicas:  # a replica that was not killed logged no traceback
        log = replica.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]


def run_job(url: str, job: dict, timeout: float = 120) -> dict:
    response = httpx.post(f"{url}/run", json={"input": job}, headers=AUTH, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def v2(url: str, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, f"{url}/v2/local/{path}", headers=AUTH, timeout=60, **kwargs)
    assert response.status_code == 200, (path, response.text)
    return response.json()


@pytest.mark.timeout(120)
def test_seed_run_whole_and_streamed_through_the_balancer(cluster):
    for _ in range(3):  # one per replica, round-robin
        answer = run_job(cluster.url, {"message": "Hello there.", **SHORT})
        assert answer["status"] == "success" and len(base64.b64decode(answer["output"]["audio"])) > 0
    with httpx.stream(
        "POST",
        f"{cluster.url}/run",
        headers=AUTH,
        timeout=60,
        json={"input": {"message": "Hello there. How are you?", "stream": True, **SHORT}},
    ) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["output"]["text"] for line in lines if "audio" in line.get("output", {})] == [
        "Hello there.",
        "How are you?",
    ]


@pytest.mark.timeout(120)
def test_v2_jobs_are_polled_streamed_and_cancelled_through_any_replica(cluster, monkeypatch):
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{cluster.url}/v2")
    endpoint = runpod.Endpoint("local", api_key=KEY)
    job = endpoint.run({"message": "Hello there. How are you?", "stream": True, "audio_format": "wav", **SHORT})
    streamed = list(job.stream())  # its polls go round the replicas
    assert [c["text"] for c in streamed] == ["Hello there.", "How are you?"]
    assert job.output(timeout=60)["chunks"] == 2
    # Every replica answers for it, the same.
    answers = [v2(r.url, "GET", f"status/{job.job_id}") for r in cluster.replicas]
    assert all(a == answers[0] for a in answers) and answers[0]["status"] == "COMPLETED"
    assert endpoint.run_sync({"message": "Hello.", **SHORT}, timeout=60)["text"] == "Hello."

    # Submitted on one replica, streamed from a second, cancelled through a third: the generation stops.
    first, second, third = cluster.replicas
    long = v2(first.url, "POST", "run", json={"input": {**LONG_JOB, "stream": True}})
    deadline = time.monotonic() + 60
    while not (page := v2(second.url, "GET", f"stream/{long['id']}"))["stream"]:
        assert page["status"] in ("IN_QUEUE", "IN_PROGRESS") and time.monotonic() < deadline, page
    assert v2(third.url, "POST", f"cancel/{long['id']}")["status"] == "CANCELLED"
    assert v2(first.url, "GET", f"status/{long['id']}")["status"] == "CANCELLED"
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        deadline = time.monotonic() + 10  # the lease goes with the generation that held it
        while client.exists(f"{KEY_PREFIX}lease:{long['id']}"):
            assert time.monotonic() < deadline, "the cancelled job is still leased"
            time.sleep(0.1)
    finally:
        client.close()
    health = [v2(r.url, "GET", "health") for r in cluster.replicas]
    assert all(h["jobs"] == health[0]["jobs"] for h in health) and health[0]["jobs"]["completed"] >= 2
    assert all(h["workers"]["ready"] == 3 * 2 for h in health)  # every live replica's slots, on any replica


@pytest.mark.timeout(120)
def test_openai_and_fish_doors_through_the_balancer(cluster):
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY)
    for fmt in ("flac", "mp3"):
        response = client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello there.", response_format=fmt, extra_body={"max_tokens": 6}
        )
        assert len(decode_ffmpeg(response.content)[0]) > 0
    fish = FishAudio(api_key=KEY, base_url=cluster.url)
    config = TTSConfig(max_new_tokens=6, format="wav")
    assert len(fish.tts.convert(text="Hello.", config=config)) > 44
    for _ in range(2):  # the live WebSocket, upgraded through nginx, on two replicas
        audio = b"".join(fish.tts.stream_websocket(iter(["Hello", " there."]), config=config))
        assert len(audio) > 44


@pytest.mark.timeout(120)
def test_a_voice_saved_on_one_replica_speaks_on_the_others(cluster):
    first, *others = cluster.replicas
    saved = run_job(first.url, {"action": "save_voice", "voice_id": "shared-voice", "reference_audio": wav_b64(1.0)})
    assert saved["output"]["voice"]["voice_id"] == "shared-voice", saved
    outputs = [
        run_job(r.url, {"message": "Hello there.", "voice_id": "shared-voice", **SHORT})["output"]
        for r in cluster.replicas
    ]
    assert all(o["audio"] == outputs[0]["audio"] for o in outputs)  # the same voice, the same seed
    listed = run_job(others[-1].url, {"action": "list_voices"})["output"]
    assert "shared-voice" in [v["voice_id"] for v in listed["voices"]]
    fish = FishAudio(api_key=KEY, base_url=cluster.url)
    assert len(fish.tts.convert(text="Hi.", reference_id="shared-voice", config=TTSConfig(max_new_tokens=6))) > 44


@pytest.mark.timeout(120)
def test_a_conversation_is_continued_on_another_replica(cluster):
    first, second, third = cluster.replicas
    run_job(
        first.url, {"message": "Hello there.", "conversation_id": "talk-1", "reference_audio": wav_b64(1.0), **SHORT}
    )
    turn = run_job(second.url, {"message": "And again.", "conversation_id": "talk-1", **SHORT})
    assert turn["status"] == "success"
    ended = run_job(third.url, {"action": "end_conversation", "conversation_id": "talk-1"})["output"]
    assert ended == {"conversation_id": "talk-1", "ended": True}  # the third replica found it


@pytest.mark.timeout(180)
def test_a_killed_replicas_jobs_fail_clearly_and_no_other_job_is_lost(cluster):
    """Jobs through the balancer; the replica running one is killed (SIGKILL) mid-job. Its running
    jobs end FAILED with the lease error; every other job completes; the balancer's next requests succeed."""
    ids = [v2(cluster.url, "POST", "run", json={"input": LONG_JOB})["id"] for _ in range(5)]
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        deadline = time.monotonic() + 90
        while True:
            owners = {i: (client.hget(f"{KEY_PREFIX}job:{i}", "owner") or b"").decode() for i in ids}
            statuses = {i: client.hget(f"{KEY_PREFIX}job:{i}", "status").decode() for i in ids}
            running = [i for i in ids if statuses[i] == "IN_PROGRESS"]
            if running:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.1)
        victim_pid = int(owners[running[0]].rsplit("-", 2)[1])  # owner: host-pid-random
        victim = next(r for r in cluster.replicas if r.process.pid == victim_pid)
        os.kill(victim_pid, signal.SIGSTOP)  # still, so what it runs cannot change under the snapshot
        statuses = {i: client.hget(f"{KEY_PREFIX}job:{i}", "status").decode() for i in ids}
        owners = {i: (client.hget(f"{KEY_PREFIX}job:{i}", "owner") or b"").decode() for i in ids}
        lost = {i for i in ids if statuses[i] == "IN_PROGRESS" and owners[i].split("-")[-2] == str(victim_pid)}
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.process.wait(timeout=10)
    finally:
        client.close()

    survivors = cluster.alive()
    assert len(survivors) == 2
    detected: dict[str, float] = {}
    finals: dict[str, dict] = {}
    deadline = time.monotonic() + 120
    while len(finals) < len(ids):
        for job_id in set(ids) - set(finals):
            answer = v2(cluster.url, "GET", f"status/{job_id}")  # through the balancer: the dead one is skipped
            if answer["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                finals[job_id] = answer
                detected[job_id] = time.monotonic() - killed_at
        assert time.monotonic() < deadline, {i: a["status"] for i, a in finals.items()}
        time.sleep(0.2)
    for job_id, answer in finals.items():
        if job_id in lost:
            assert answer["status"] == "FAILED" and answer["error"] == LOST_ERROR.format(lease_s=LEASE_S), answer
            assert detected[job_id] < LEASE_S + 5, detected[job_id]
        else:
            assert answer["status"] == "COMPLETED", answer
    assert lost
    print(
        f"killed replica's job(s) reported FAILED {min(detected[i] for i in lost):.2f} s after the kill "
        f"(lease {LEASE_S:g} s)"
    )
    for _ in range(6):  # the balancer's next requests succeed, whichever replica they were meant for
        assert run_job(cluster.url, {"message": "Still here.", **SHORT})["status"] == "success"
        assert v2(cluster.url, "GET", "health")["jobs"]["failed"] >= len(lost)


@pytest.mark.timeout(240)
def test_a_stopped_replica_fails_its_running_job_at_once_and_its_taken_job_runs_elsewhere(cluster):
    """SIGTERM (a redeploy) to a replica running a /v2 job and holding another it took but could not
    start (its other generation slot busy with a seed /run): the running one reads FAILED with the
    shutdown error through the balancer within a couple of seconds, not a lease later; the held one
    runs on the other replica; the seed request it was serving still completes (graceful shutdown)."""
    victim, survivor = cluster.alive()[:2]
    door_answer: list[httpx.Response] = []
    busy = {"message": " ".join(f"Sentence number {i} is here." for i in range(12)), "max_tokens": 400, "seed": 2}
    door = threading.Thread(
        target=lambda: door_answer.append(
            httpx.post(f"{victim.url}/run", json={"input": busy}, headers=AUTH, timeout=200)
        )
    )
    door.start()
    client = redis.Redis.from_url(cluster.redis_url)
    victim_tag = f"-{victim.process.pid}-"
    try:
        while not any(m.startswith(b"door-") for m in client.zrange(f"{KEY_PREFIX}active", 0, -1)):
            time.sleep(0.05)
        ids = [v2(cluster.url, "POST", "run", json={"input": LONG_JOB})["id"] for _ in range(5)]
        deadline = time.monotonic() + 90
        while True:
            jobs = {i: client.hmget(f"{KEY_PREFIX}job:{i}", "status", "owner") for i in ids}
            mine = {i: s.decode() for i, (s, o) in jobs.items() if o and victim_tag in o.decode()}
            running = [i for i, s in mine.items() if s == "IN_PROGRESS"]
            held = [i for i, s in mine.items() if s == "IN_QUEUE"]
            if running and held:
                break
            assert time.monotonic() < deadline and door.is_alive(), jobs
            time.sleep(0.05)
        victim.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        while (answer := v2(cluster.url, "GET", f"status/{running[0]}"))["status"] != "FAILED":
            assert time.monotonic() - stopped_at < 5, answer
            time.sleep(0.05)
        failed_s = time.monotonic() - stopped_at
        assert answer["error"] == SHUTDOWN_ERROR
        finals = {}
        deadline = time.monotonic() + 150
        while len(finals) < len(ids):
            for job_id in set(ids) - set(finals):
                got = v2(cluster.url, "GET", f"status/{job_id}")
                if got["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                    finals[job_id] = got
            assert time.monotonic() < deadline, finals
            time.sleep(0.2)
        for job_id, got in finals.items():
            if job_id not in running:
                assert got["status"] == "COMPLETED", got  # the held job too: run by the survivor
        owner = client.hget(f"{KEY_PREFIX}job:{held[0]}", "owner").decode()
        assert victim_tag not in owner
        door.join(timeout=200)
        assert door_answer and door_answer[0].status_code == 200, door_answer
        assert victim.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        print(f"stopped replica's running job read FAILED {failed_s:.2f} s after SIGTERM; its held job ran elsewhere")
    finally:
        client.close()
    assert run_job(cluster.url, {"message": "Still here.", **SHORT})["status"] == "success"
    assert v2(cluster.url, "GET", "health")["workers"]["ready"] == 2  # the stopped replica's slots are gone
