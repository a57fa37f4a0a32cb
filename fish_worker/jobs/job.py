"""One job as every door hands it to the JobRunner: built once at the door, never a loose dict.

The doors: the RunPod queue (`Job.from_runpod`, jobs/runpod_adapter.py), the self-hosted server's
seed /run and /v2 routes, and the local tools (quick start, `handler.py --test_input`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Which RunPod result limit a whole result must fit (audio/formats.py RESULT_LIMIT_BYTES).
ResultRoute = Literal["run", "runsync"]


@dataclass(frozen=True)
class Job:
    id: str
    input: Any  # the raw job input, as sent: the runner validates it (jobs/inputs.py)
    # Whose voices and conversations these are (the self-hosted server's tenant; None on RunPod).
    tenant: str | None = None
    # The RunPod limit a whole result must fit; None: none (the self-hosted server answers directly).
    result_route: ResultRoute | None = "run"
    # The job asked for `stream: true`: chunks as they are made, then a summary. The one read of the flag.
    streamed: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "streamed", isinstance(self.input, dict) and self.input.get("stream") is True)

    @classmethod
    def from_runpod(cls, job: dict[str, Any]) -> Job:
        """The platform's job dict (`id`, `input`, ...). A queue job cannot tell /run from /runsync,
        so its whole result must fit the smaller limit ("run"); a worker never sees a tenant."""
        return cls(id=str(job.get("id", "?")), input=job.get("input"))
