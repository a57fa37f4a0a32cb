"""All configuration, read once from the environment (see README "Environment variables")."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="ignore")

    # Model
    checkpoint_dir: Path = Path("/runpod-volume/checkpoints/openaudio-s1-mini")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    warmup: bool = True  # run one short synthesis at start so the first job is not the slow one

    # Request limits
    max_text_chars: int = Field(2000, ge=1)
    max_tokens_limit: int = Field(2048, ge=1)  # cap on the request's max_tokens (codec frames per sentence)
    sentence_max_chars: int = Field(300, ge=20)
    reference_max_seconds: float = Field(30.0, gt=0)
    reference_max_bytes: int = Field(16 * 1024 * 1024, gt=0)  # decoded WAV bytes
    reference_cache_size: int = Field(32, ge=0)  # encoded voices kept in memory, by content hash

    # Worker
    log_level: str = "INFO"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
