"""Shared fixtures: one tiny checkpoint and one loaded service per test session (CPU)."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on CPU (real-size checkpoint); the normal suite runs it once")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), seed=0)


@pytest.fixture(scope="session")
def settings(tiny_checkpoint, tmp_path_factory):
    from fish_worker.settings import Settings, StorageSettings

    return Settings(checkpoint_dir=tiny_checkpoint, device="cpu", warmup=False, reference_max_seconds=5.0,
                    storage=StorageSettings(voices_dir=tmp_path_factory.mktemp("voices")))


@pytest.fixture(scope="session")
def app_settings(settings):
    """`app_settings(api_keys=KEY, ...)`: the test Settings with those server fields (the rest from FISH_*)."""
    from fish_worker.settings import ServerSettings

    def with_server(**server) -> "Settings":  # noqa: F821 (imported lazily, as every fixture here)
        return settings.model_copy(update={"server": ServerSettings(**server)})

    return with_server


@pytest.fixture(scope="session")
def service(settings):
    from fish_worker.tts.service import TTSService

    return TTSService.load(settings)


@pytest.fixture(scope="session")
def runner(service):
    from fish_worker.jobs.runner import JobRunner

    return JobRunner(service)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    from fish_worker.devtools.tiny_chat_model import write_tiny_chat_model

    return write_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), seed=0)


def wav_b64(seconds: float = 1.0, sample_rate: int = 16000, channels: int = 1, amplitude: float = 0.3,
            subtype: str = "PCM_16", fmt: str = "WAV") -> str:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=fmt, subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode()
