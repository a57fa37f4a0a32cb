"""Response bodies as JSON, written by orjson: job outputs carry float audio as long number lists,
which FastAPI's default path (jsonable_encoder, then json.dumps) walks in Python, ~50 µs a sample on
a loaded CPU, on the event loop. orjson writes the same numbers (shortest round-trip form) in C, and
numpy arrays directly (OPT_SERIALIZE_NUMPY)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_OPTIONS)


def json_response(obj: Any, status_code: int = 200) -> Response:
    """A JSON response, served as is (FastAPI does not re-encode a Response)."""
    return Response(dumps(obj), status_code=status_code, media_type="application/json")
