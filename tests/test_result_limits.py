"""The pre-synthesis size check: a whole result that can be seen not to fit fails before any work."""

from __future__ import annotations

import asyncio

import pytest

from fish_worker.jobs.job import Job
from fish_worker.jobs.outputs import estimated_result_bytes, result_too_large_error
from fish_worker.settings import S3Settings, Settings, StorageSettings

SETTINGS = Settings()
LONG = "word " * 400  # 2000 characters: at least ~100 s of speech


def test_ordinary_float_request_is_let_through():
    text = "A normal paragraph of speech. " * 10  # 300 characters, ~15-20 s
    assert result_too_large_error(text, 1000 * 10, "float", SETTINGS, "run") is None


def test_long_float_request_fails_naming_the_estimate_and_the_ways_out():
    error = result_too_large_error(LONG, 1000 * 20, "float", SETTINGS, "run")
    assert str(error).startswith(
        "audio_format: the result would be at least 30.9 MB, over RunPod's ~10 MB limit for /run"
    )
    assert "mp3" in str(error) and "stream" in str(error) and "S3" in str(error)


def test_the_frames_budget_caps_the_estimate():
    # 2000 characters but at most 50 frames (~2.3 s): fits whatever the text.
    assert result_too_large_error(LONG, 50, "float", SETTINGS, "run") is None
    assert estimated_result_bytes(LONG, 50, "float") < estimated_result_bytes(LONG, 10_000, "float")


@pytest.mark.parametrize(
    "fmt, route, fails",
    [
        ("float", "runsync", True),
        ("pcm16", "run", True),
        ("pcm16", "runsync", False),
        ("mp3", "run", False),
        ("opus", "run", False),
    ],
)
def test_limit_depends_on_format_and_route(fmt, route, fails):
    assert (result_too_large_error(LONG, 1000 * 20, fmt, SETTINGS, route) is not None) == fails


def test_no_check_without_a_limit_or_with_a_bucket():
    assert result_too_large_error(LONG, 20_000, "float", SETTINGS, None) is None  # self-hosted /run
    assert (
        result_too_large_error(
            LONG,
            20_000,
            "float",
            SETTINGS.model_copy(update={"storage": StorageSettings(s3=S3Settings(bucket="b"))}),
            "run",
        )
        is None
    )


@pytest.mark.timeout(60)
def test_the_job_fails_before_synthesis(runner, monkeypatch):
    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesis started")

    monkeypatch.setattr(runner.service, "synthesize", no_synthesis)
    result = asyncio.run(runner.result(Job(id="big", input={"message": LONG})))
    assert result["error"].startswith("audio_format: the result would be at least")
