"""The playground: a static page at `/` that speaks through the public API (seed /run, /model voices).
Its microphone button records a voice message in the browser (MediaRecorder) and sends it as the job's
`audio`: the server transcribes it (FISH_ASR_*), the page shows the transcript and plays the reply.

Served without auth: it holds no secrets; the visitor types an API key, which the page sends as
`Authorization: Bearer` on its API calls, like any other client. No build step, no external CDN:
three files from fish_worker/server/routers/static/, each with a Content-Security-Policy that lets it
talk to this server only. FISH_PLAYGROUND=false turns it off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"
# The only files served (no path from the URL reaches the filesystem).
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/playground/{name}")
async def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404)
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)
