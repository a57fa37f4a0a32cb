"""Bearer-key check shared by all doors; each door renders the 401 in its own error shape."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fish_worker.server.errors import ApiError

# auto_error=False: a missing header is our 401 (in the door's shape), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="One of the keys in FISH_API_KEYS.")


def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    settings = request.app.state.server_settings
    if settings.auth_disabled:
        return
    if credentials is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    # Compare against every key in constant time, so timing does not reveal a key's prefix.
    if not any(hmac.compare_digest(credentials.credentials.encode(), k.encode()) for k in settings.key_set):
        raise ApiError(401, "invalid API key")
