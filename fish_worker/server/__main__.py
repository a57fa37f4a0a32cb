"""`python -m fish_worker.server`: load the models once, then serve them over HTTP with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from fish_worker.engine.checkpoint import CheckpointError
from fish_worker.server.app import create_app
from fish_worker.server.config import ServerSettings
from fish_worker.server.protocol import uvicorn_options
from fish_worker.settings import get_settings
from fish_worker.worker import build_runner, configure_logging

log = logging.getLogger("fish_worker.server")


def main() -> None:
    settings, server_settings = get_settings(), ServerSettings()
    configure_logging(settings.log_level)
    if not server_settings.key_set and not server_settings.auth_disabled:
        log.error("no API keys: set FISH_API_KEYS=key1,key2 (or FISH_AUTH_DISABLED=true to serve without auth)")
        sys.exit(2)
    try:
        runner = build_runner(settings)
    except CheckpointError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    app = create_app(runner, server_settings)
    uvicorn.run(app, host=server_settings.host, port=server_settings.port, log_level=settings.log_level.lower(),
                **uvicorn_options(server_settings))


if __name__ == "__main__":
    main()
