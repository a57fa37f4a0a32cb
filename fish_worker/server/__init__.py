"""Self-hosted HTTP server around the worker's JobRunner (`python -m fish_worker.server`)."""

from fish_worker.server.app import create_app
from fish_worker.server.config import ServerSettings

__all__ = ["ServerSettings", "create_app"]
