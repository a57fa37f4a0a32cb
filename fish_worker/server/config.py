"""Settings of the self-hosted server (FISH_ prefix, like the worker's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="ignore")

    api_keys: str = ""  # comma-separated bearer keys; requests without one of them get 401
    auth_disabled: bool = False  # the only way to serve without keys: it has to be said explicitly
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    # Jobs generating at once, across all doors; unset: the worker's FISH_MAX_CONCURRENCY, so the
    # server batches concurrent jobs exactly like a RunPod worker does.
    max_concurrent_jobs: int | None = Field(None, ge=1)
    job_ttl_s: float = Field(1800, gt=0)  # /v2 results are kept this long, as RunPod keeps /run results 30 min
    runsync_wait_s: float = Field(90, gt=0)  # /v2 runsync answers IN_PROGRESS after this, as RunPod does
    playground: bool = True  # the browser playground at / (static, no secrets; its API calls need a key)

    @property
    def key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())
