"""Self-hosted HTTP server around the worker's JobRunner (`python -m fish_worker.server`)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m fish_worker.server` opens its port before torch loads.
    if name == "create_app":
        from fish_worker.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
