"""A short run of scripts/fuzz_jobs.py in the suite: generated inputs through the real job function."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from fuzz_jobs import FUZZ_MAX_JOB_FRAMES, fuzz  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_two_hundred_generated_jobs_end_in_a_result_or_a_bounded_field_error(runner, service, monkeypatch):
    monkeypatch.setattr(
        service, "limits", dataclasses.replace(service.limits, max_job_frames=FUZZ_MAX_JOB_FRAMES)
    )  # valid jobs stay cheap
    report = fuzz(runner, cases=200, seed=0, timeout_s=60)
    print(report.summary())
    assert report.cases == 200
    assert report.failures == []
    assert report.succeeded > 0 and sum(report.rejections.values()) > 0
