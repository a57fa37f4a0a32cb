"""Who is calling: the bearer key is checked before anything reads the request's body.

`AuthMiddleware` (pure ASGI, outside FastAPI's routing) answers 401 from the headers alone, so an
unauthenticated upload is never read, parsed or buffered, and an unauthenticated WebSocket is refused
before its handshake. A valid key names the caller's tenant, which the doors put on every job
(`tenant_of(request)`, or of a WebSocket).
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from fish_worker.settings import ServerSettings
from fish_worker.server.errors import ApiError, deny_websocket, error_response

# Open to all, no key: liveness probes (they say nothing private).
OPEN_PATHS = frozenset({"/health", "/ping"})
# The playground's static page and files (no secrets: its API calls carry the key typed into it).
PLAYGROUND_PATHS = frozenset({"/"})
PLAYGROUND_PREFIX = "/playground/"
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_TENANT_STATE = "fish_tenant"
_NOT_CHECKED = object()

# Declares the scheme in the OpenAPI schema; the check itself is the middleware's.
_bearer = HTTPBearer(auto_error=False, description="One of the keys in FISH_API_KEYS.")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.disabled = settings.auth_disabled
        self.keys = [(key.encode(), tenant) for key, tenant in settings.tenant_keys.items()]
        self.open_paths = OPEN_PATHS | (DOCS_PATHS if settings.enable_docs else frozenset())
        self.playground = settings.playground

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._is_open(scope["path"]):
            await self.app(scope, receive, send)  # lifespan; liveness probes; the playground's files
            return
        tenant: str | None = None
        if not self.disabled:
            try:
                tenant = self._tenant(scope)
            except ApiError as exc:
                if scope["type"] == "websocket":  # refused on the upgrade request: no handshake
                    await deny_websocket(
                        scope, receive, send, exc.status, exc.message, headers={"WWW-Authenticate": "Bearer"}
                    )
                    return
                # "Connection: close": the unread body must not be taken for the next request.
                response = error_response(
                    scope["path"], 401, exc.message, headers={"WWW-Authenticate": "Bearer", "Connection": "close"}
                )
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})[_TENANT_STATE] = tenant
        await self.app(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        if path in self.open_paths:
            return True
        return self.playground and (path in PLAYGROUND_PATHS or path.startswith(PLAYGROUND_PREFIX))

    def _tenant(self, scope: Scope) -> str:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        scheme, _, key = (header or b"").partition(b" ")
        if header is None or scheme.lower() != b"bearer" or not key.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
        key = key.strip()
        # Compare against every key in constant time, so timing reveals neither a key's prefix nor which matched.
        tenant = None
        for known, name in self.keys:
            if hmac.compare_digest(key, known):
                tenant = name
        if tenant is None:
            raise ApiError(401, "invalid API key")
        return tenant


def tenant_of_scope(scope: Scope) -> str | None:
    """The tenant AuthMiddleware put on `scope` (None: no keys, or an open path, which has no tenant)."""
    tenant = scope.get("state", {}).get(_TENANT_STATE)
    return None if tenant is _NOT_CHECKED else tenant


def tenant_of(connection: HTTPConnection) -> str | None:
    """The caller's tenant, of a request or a WebSocket (None: the one tenant of a server without keys)."""
    tenant = connection.scope.get("state", {}).get(_TENANT_STATE, _NOT_CHECKED)
    if tenant is _NOT_CHECKED:  # a route reached without the middleware: refuse rather than guess
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    return tenant


def require_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Router dependency: documents the bearer scheme, and refuses a request the middleware did not check."""
    tenant_of(request)
