"""Shared fixtures: one tiny checkpoint and one loaded service per test session (CPU), Redis, S3.

Shared helper functions live in helpers.py.
"""

from __future__ import annotations

import os

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helpers import BUCKET, free_port, start_redis_server, stop

os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on CPU (real-size checkpoint); the normal suite runs it once")


# What CI installs for the groups that skip without it (.ci/run installs them when missing).
SKIPPED_GROUP_FIX = (
    "apt-get install redis-server nginx-light chromium chromium-driver nodejs (.ci/run installs all "
    "but nodejs when missing); bash scripts/setup_clients_env.sh for the voice-agent clients"
)


def pytest_terminal_summary(terminalreporter):
    """Skips are said out loud, even under -q: a green run that skipped the Redis or browser tests
    did not run what CI runs."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_sep("-", f"{len(skipped)} tests skipped: this run is not all that CI runs")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"  {count:3d} × {reason}")
    terminalreporter.write_line(f"  to run them: {SKIPPED_GROUP_FIX}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), seed=0)


@pytest.fixture(scope="session")
def settings(tiny_checkpoint, tmp_path_factory):
    from fish_worker.settings import Settings, StorageSettings

    return Settings(
        checkpoint_dir=tiny_checkpoint,
        device="cpu",
        warmup=False,
        reference_max_seconds=5.0,
        storage=StorageSettings(voices_dir=tmp_path_factory.mktemp("voices")),
    )


@pytest.fixture(scope="session")
def app_settings(settings):
    """`app_settings(api_keys=KEY, ...)`: the test Settings with those server fields (the rest from FISH_*)."""
    from fish_worker.settings import ServerSettings

    def with_server(**server) -> "Settings":  # noqa: F821 (imported lazily, as every fixture here)
        return settings.model_copy(update={"server": ServerSettings(**server)})

    return with_server


@pytest.fixture(scope="session")
def service(settings):
    from fish_worker.tts.loader import load_tts

    return load_tts(settings)


@pytest.fixture(scope="session")
def runner(service, settings):
    from fish_worker.jobs.runner import JobRunner

    return JobRunner(service, settings)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model

    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), seed=0)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    from fish_worker.devtools.tiny_whisper import write_tiny_whisper

    return write_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), seed=0)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    process, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    stop(process)


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def no_ambient_aws_config(monkeypatch, tmp_path):
    """Only what the test passes counts: no AWS_* variables, profiles or instance metadata."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
