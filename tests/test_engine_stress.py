"""Random schedules of joins, stops, disconnects, natural ends and injected faults: every job ends,
slots return, and surviving jobs' tokens equal their solo runs (the long run: `python -m
fish_worker.devtools.engine_stress CHECKPOINT --schedules 1000`)."""

from __future__ import annotations

import pytest

from fish_worker.devtools.engine_stress import run
from fish_worker.engine.generation import SemanticGenerator


@pytest.mark.timeout(600)
def test_random_schedules_all_end_with_solo_tokens(service):
    single = SemanticGenerator(service.generator.model, service.generator.device)
    stress = run(single, schedules=40, seed=1)
    assert stress.failures == []
    assert stress.scheduler.step_failures > 0  # faults were injected and survived
