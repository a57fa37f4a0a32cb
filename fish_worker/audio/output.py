"""Audio leaving the worker: float samples in [-1, 1]."""

from __future__ import annotations

import numpy as np


def to_float_list(audio: np.ndarray) -> list[float]:
    """NaN/inf become silence and peaks are clipped, so the output is always valid [-1, 1]."""
    safe = np.nan_to_num(audio.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(safe, -1.0, 1.0).tolist()
