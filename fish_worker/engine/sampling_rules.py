"""The sampling parameters' defaults and ranges: their one definition, for the engine, the service and every door.

No torch here: the doors' request models import it (jobs/inputs.py, server/fish_models.py; the OpenAI
door has no sampling fields and speaks with the defaults). docs/limits.md says what a client sees.

The ranges are Fish Audio's published ones (temperature and top_p 0 to 1), on every door: the sampler
takes them whole, as fish-speech's does: temperature 0 is near-greedy (it is clipped to 1e-5) and top_p 0
keeps only the likeliest token (engine/sampling.py). A repetition penalty of 0 would divide by zero.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# fish-speech's defaults: the job's, the OpenAI door's, the chat model's temperature, the engine's.
TEMPERATURE = 0.7
TOP_P = 0.8
REPETITION_PENALTY = 1.1

# Fish Audio's API documents other defaults for these two; its doors keep them, so a Fish client that leaves
# them out (fish-audio-sdk sends top_p and temperature, never repetition_penalty) gets what Fish's docs say.
FISH_TOP_P = 0.7
FISH_REPETITION_PENALTY = 1.2

# The bounds, as pydantic field types: every door's request model declares its fields with these.
Temperature = Annotated[float, Field(ge=0.0, le=1.0, description="Sampling temperature, 0 to 1 (0: near-greedy).")]
TopP = Annotated[float, Field(ge=0.0, le=1.0, description="Nucleus sampling, 0 to 1 (0: the likeliest token).")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, lt=2.0, description="Repetition penalty, between 0 and 2.")]
