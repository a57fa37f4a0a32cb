"""handler.py under runpod's real worker loop, against a fake job queue on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_runpod_queue import FakeJobQueue

ROOT = Path(__file__).resolve().parents[1]
JOBS = [
    {"id": "plain", "input": {"message": "Hello from the queue.", "max_tokens": 6, "seed": 1}},
    {"id": "stream", "input": {"message": "One sentence here. And a second one.", "max_tokens": 5,
                               "seed": 2, "stream": True}},
    {"id": "bad", "input": {"message": "hi", "temperature": 3}},
    {"id": "after-bad", "input": {"message": "Still alive.", "max_tokens": 4, "seed": 3}},
    # A lone surrogate (valid JSON "\\ud800") cannot be written back as UTF-8: refused before any work.
    {"id": "surrogate", "input": {"message": "\ud800 hello.", "max_tokens": 4, "seed": 4}},
    {"id": "after-surrogate", "input": {"message": "Alive again.", "max_tokens": 4, "seed": 5}},
]


@pytest.fixture(scope="module")
def worker_results(tiny_checkpoint, tmp_path_factory):
    with FakeJobQueue([dict(j) for j in JOBS]) as queue:
        env = {**os.environ, **queue.worker_env(), "FISH_CHECKPOINT_DIR": str(tiny_checkpoint),
               "FISH_DEVICE": "cpu", "FISH_WARMUP": "false", "RUNPOD_LOG_LEVEL": "INFO"}
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen([sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                finished = queue.wait_for(len(JOBS), timeout=120)
            finally:
                worker.terminate()
                worker.wait(timeout=30)
        assert finished, f"worker did not finish all jobs; log:\n{log.read_text()[-3000:]}"
        return queue


def test_plain_job_result_posted(worker_results):
    [output] = worker_results.done["plain"]["output"]  # generator handler: aggregated chunk list
    assert output["text"] == "Hello from the queue."
    assert len(output["audio"]) == 6 * 2048 and output["sample_rate"] == 44100


def test_stream_chunks_posted_one_per_sentence_then_aggregate(worker_results):
    streamed = worker_results.streamed["stream"]
    assert [c["text"] for c in streamed] == ["One sentence here.", "And a second one."]
    assert all(len(c["audio"]) == 5 * 2048 for c in streamed)
    assert worker_results.done["stream"]["output"] == streamed  # what /runsync returns


def test_bad_input_fails_job_with_field_error(worker_results):
    done = worker_results.done["bad"]
    assert done["error"] == "temperature: Input should be less than or equal to 1"
    assert "bad" not in worker_results.streamed  # error chunks are never streamed


def test_worker_keeps_serving_after_a_failed_job(worker_results):
    [output] = worker_results.done["after-bad"]["output"]
    assert output["text"] == "Still alive."


def test_lone_surrogate_gets_exactly_one_error_and_the_worker_goes_on(worker_results):
    assert worker_results.done["surrogate"] == {
        "error": "message: contains invalid unicode (lone surrogate) at position 0"}
    assert worker_results.done_posts["surrogate"] == 1 and "surrogate" not in worker_results.streamed
    [output] = worker_results.done["after-surrogate"]["output"]
    assert output["text"] == "Alive again."
