"""Settings of the self-hosted server (FISH_ prefix, like the worker's)."""

from __future__ import annotations

import hashlib

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fish_worker.tenancy import TENANT_PATTERN

# Room in a body for everything but the reference audio's base64 (text, prompts, field names).
BODY_MARGIN_BYTES = 1024 * 1024


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="ignore")

    # Comma-separated bearer keys, each its own tenant: "alice:KEY1,bob:KEY2", or plain "KEY1,KEY2"
    # (tenant named by a short hash of the key). Requests without one of them get 401.
    api_keys: str = ""
    auth_disabled: bool = False  # the only way to serve without keys: it has to be said explicitly
    enable_docs: bool = False  # /docs, /redoc and /openapi.json
    host: str = "0.0.0.0"
    # PORT / PORT_HEALTH: what RunPod load-balancing endpoints set. Health unset: /ping on `port`.
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "FISH_PORT"))
    port_health: int | None = Field(None, ge=1, le=65535, validation_alias=AliasChoices("PORT_HEALTH", "FISH_PORT_HEALTH"))
    # Jobs generating at once, across all doors; unset: the worker's FISH_MAX_CONCURRENCY, so the
    # server batches concurrent jobs exactly like a RunPod worker does.
    max_concurrent_jobs: int | None = Field(None, ge=1)
    # Jobs admitted (generating + waiting) on the whole server and per tenant; more get 429.
    max_queued_jobs: int = Field(64, ge=1)
    max_queued_jobs_per_tenant: int = Field(32, ge=1)
    retry_after_s: int = Field(5, ge=1)  # the Retry-After of a 429
    job_ttl_s: float = Field(1800, gt=0)  # /v2 results are kept this long, as RunPod keeps /run results 30 min
    max_stored_jobs: int = Field(1000, ge=1)  # /v2 jobs kept at most (finished ones, oldest dropped first)
    max_stored_result_bytes: int = Field(512 * 1024 * 1024, ge=1)  # ... and their results' JSON bytes at most
    runsync_wait_s: float = Field(90, gt=0)  # /v2 runsync answers IN_PROGRESS after this, as RunPod does
    # Largest request body; unset: base64 of FISH_REFERENCE_MAX_BYTES plus 1 MiB for the rest.
    max_body_bytes: int | None = Field(None, ge=1)
    header_timeout_s: float = Field(10, gt=0)  # a request's headers must arrive within this
    body_timeout_s: float = Field(60, gt=0)  # ... and its body within this, once the headers are in
    keep_alive_timeout_s: int = Field(5, ge=1)  # an idle keep-alive connection is closed after this
    # Fish live WebSocket sessions (/v1/tts/live): each is one admitted job for its whole life.
    live_idle_timeout_s: float = Field(60, gt=0)  # ended when nothing went either way for this long
    live_max_session_s: float = Field(1800, gt=0)  # ended after this long, whatever is happening
    live_max_text_chars: int = Field(100_000, ge=1)  # text one session may send, in all
    playground: bool = True  # the browser playground at / (static, no secrets; its API calls need a key)

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str) -> str:
        parse_api_keys(value)  # raises ValueError naming the bad entry
        return value

    @property
    def tenant_keys(self) -> dict[str, str]:
        """Each API key → its tenant's name."""
        return parse_api_keys(self.api_keys)

    @property
    def key_set(self) -> frozenset[str]:
        return frozenset(self.tenant_keys)

    def body_limit(self, reference_max_bytes: int) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return -(-reference_max_bytes // 3) * 4 + BODY_MARGIN_BYTES


def parse_api_keys(text: str) -> dict[str, str]:
    """"alice:KEY1,bob:KEY2,KEY3" → {KEY1: alice, KEY2: bob, KEY3: key-<hash>}.

    An entry is named when the part before its first ":" is a tenant name; several keys may name one
    tenant (e.g. while rotating keys). A plain key's tenant is a short hash of it, stable across restarts.
    """
    keys: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if sep and TENANT_PATTERN.fullmatch(name) and key.strip():
            tenant, key = name, key.strip()
        else:
            tenant, key = "key-" + hashlib.sha256(entry.encode()).hexdigest()[:12], entry
        if keys.get(key, tenant) != tenant:
            raise ValueError(f"FISH_API_KEYS: one key is given to two tenants ({keys[key]!r} and {tenant!r})")
        keys[key] = tenant
    return keys
