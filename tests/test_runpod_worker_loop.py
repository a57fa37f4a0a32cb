"""handler.py under runpod's real worker loop, against a fake job queue on 127.0.0.1.

The queue refuses what the platform refuses (stream POSTs over 1 MB, job-done over the route's
limit) and records every POST's size, so these tests show what RunPod would store for each job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_runpod_queue import RESULT_LIMITS, STREAM_CHUNK_LIMIT, FakeJobQueue

ROOT = Path(__file__).resolve().parents[1]
LONG_TEXT = "First long sentence. Second long sentence. Third one."
JOBS = [
    {"id": "plain", "input": {"message": "Hello from the queue.", "max_tokens": 6, "seed": 1}},
    {
        "id": "stream",
        "input": {"message": "One sentence here. And a second one.", "max_tokens": 5, "seed": 2, "stream": True},
    },
    # ~16 MB of float audio (37 s) in all: over the /run limit as one result, fine as <= 1 MB chunks.
    {"id": "long-stream", "input": {"message": LONG_TEXT, "max_tokens": 300, "seed": 1, "stream": True}},
    {"id": "bad", "input": {"message": "hi", "temperature": 3}},
    # ~100 s of float audio can be seen not to fit /run: refused before any synthesis.
    {"id": "too-big", "input": {"message": "word " * 400, "max_tokens": 1000}},
    {"id": "after-bad", "input": {"message": "Still alive.", "max_tokens": 4, "seed": 3}},
    # Concurrent small jobs, plain and streamed, taken in batches (FISH_MAX_CONCURRENCY=4).
    *(
        {"id": f"c{i}", "input": {"message": f"Job number {i}.", "max_tokens": 3 + i, "seed": i, "stream": i % 2 == 1}}
        for i in range(5)
    ),
    # A lone surrogate (valid JSON "\\ud800") cannot be written back as UTF-8: refused before any work.
    {"id": "surrogate", "input": {"message": "\ud800 hello.", "max_tokens": 4, "seed": 4}},
    {"id": "after-surrogate", "input": {"message": "Alive again.", "max_tokens": 4, "seed": 5}},
]


@pytest.fixture(scope="module")
def queue(tiny_checkpoint, tmp_path_factory):
    with FakeJobQueue([dict(j) for j in JOBS]) as queue:
        env = {
            **os.environ,
            **queue.worker_env(),
            "FISH_CHECKPOINT_DIR": str(tiny_checkpoint),
            "FISH_DEVICE": "cpu",
            "FISH_WARMUP": "false",
            "FISH_MAX_CONCURRENCY": "4",
            "RUNPOD_LOG_LEVEL": "INFO",
        }
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen(
                [sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                finished = queue.wait_for(len(JOBS), timeout=240)
            finally:
                worker.terminate()
                worker.wait(timeout=30)
        assert finished, f"worker did not finish all jobs; log:\n{log.read_text()[-3000:]}"
        return queue


def test_nothing_was_refused_for_its_size(queue):
    assert queue.rejected == {}
    for job_id, posts in queue.sizes.items():
        assert all(size <= queue.limit(kind, job_id) for kind, size in posts), job_id


def test_every_job_ends_with_exactly_one_job_done(queue):
    assert queue.done_posts == {job["id"]: 1 for job in JOBS}


def test_plain_job_is_one_result_object_and_nothing_streamed(queue):
    output = queue.done["plain"]["output"]
    assert output["text"] == "Hello from the queue." and output["audio_format"] == "float"
    assert len(output["audio"]) == 6 * 2048 and output["sample_rate"] == 44100 and output["seed"] == 1
    assert "plain" not in queue.streamed
    assert queue.done_query["plain"]["isStream"] == "false"


def test_streamed_job_sends_chunks_then_a_summary(queue):
    streamed = queue.streamed["stream"]
    assert [c["text"] for c in streamed] == ["One sentence here.", "And a second one."]
    assert all(len(c["audio"]) == 5 * 2048 for c in streamed)
    assert queue.done["stream"] == {
        "output": {
            "text": "One sentence here. And a second one.",
            "duration_s": round(2 * 5 * 2048 / 44100, 3),
            "chunks": 2,
            "seed": 2,
        }
    }
    assert queue.done_query["stream"]["isStream"] == "true"


def test_long_streamed_job_stays_in_one_megabyte_chunks_and_a_small_summary(queue):
    posts = queue.sizes["long-stream"]
    stream_bytes = [size for kind, size in posts if kind == "job-stream"]
    [(_, done_bytes)] = [p for p in posts if p[0] == "job-done"]
    assert sum(stream_bytes) > RESULT_LIMITS["run"]  # more than one /run result could carry
    assert max(stream_bytes) <= STREAM_CHUNK_LIMIT and done_bytes < 1000
    samples = sum(len(c["audio"]) for c in queue.streamed["long-stream"])
    assert samples % 2048 == 0  # whole codec frames
    summary = queue.done["long-stream"]["output"]
    assert summary["text"] == LONG_TEXT and summary["chunks"] == len(stream_bytes)
    assert summary["duration_s"] == pytest.approx(samples / 44100, abs=0.01)


def test_bad_input_fails_job_with_field_error(queue):
    assert queue.done["bad"] == {"error": "temperature: Input should be less than or equal to 1"}
    assert "bad" not in queue.streamed


def test_result_that_cannot_fit_fails_before_synthesis(queue):
    error = queue.done["too-big"]["error"]
    assert error.startswith("audio_format: the result would be at least") and "limit for /run" in error


def test_worker_keeps_serving_after_a_failed_job(queue):
    assert queue.done["after-bad"]["output"]["text"] == "Still alive."


def test_concurrent_jobs_each_get_their_own_result(queue):
    for i in range(5):
        done = queue.done[f"c{i}"]["output"]
        assert done["text"] == f"Job number {i}." and done["seed"] == i
        if i % 2:
            assert [c["text"] for c in queue.streamed[f"c{i}"]] == [f"Job number {i}."]
            assert "audio" not in done and done["chunks"] == 1
        else:
            assert len(done["audio"]) == (3 + i) * 2048 and f"c{i}" not in queue.streamed


@pytest.mark.timeout(180)
def test_test_input_prints_what_the_platform_stores(tiny_checkpoint):
    job = {"input": {"message": "Local one. Local two.", "max_tokens": 3, "seed": 5, "stream": True}}
    env = {**os.environ, "FISH_CHECKPOINT_DIR": str(tiny_checkpoint), "FISH_DEVICE": "cpu", "FISH_WARMUP": "false"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stored = json.loads(result.stdout.strip().splitlines()[-1])
    chunks = [c["output"] for c in stored["stream"]]  # what GET /stream hands out
    samples = sum(len(c["audio"]) for c in chunks)
    assert samples > 0 and chunks[0]["text"].startswith("Local one.")
    assert stored.keys() == {"output", "stream"}  # job-done: the summary, never the audio again
    assert stored["output"] == {
        "text": " ".join(c["text"] for c in chunks if c["text"]),
        "duration_s": round(samples / 44100, 3),
        "chunks": len(chunks),
        "seed": 5,
    }


def test_lone_surrogate_gets_exactly_one_error_and_the_worker_goes_on(queue):
    assert queue.done["surrogate"] == {"error": "message: contains invalid unicode (lone surrogate) at position 0"}
    assert queue.done_posts["surrogate"] == 1 and "surrogate" not in queue.streamed
    assert queue.done["after-surrogate"]["output"]["text"] == "Alive again."
