"""All configuration, read once from the environment (see README "Environment variables")."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="ignore")

    # Model
    checkpoint_dir: Path = Path("/runpod-volume/checkpoints/openaudio-s1-mini")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    download_missing: bool = True  # with HF_TOKEN set, fetch a missing checkpoint at start (empty volume)
    warmup: bool = True  # run one short synthesis at start so the first job is not the slow one

    # Request limits
    max_text_chars: int = Field(2000, ge=1)
    max_tokens_limit: int = Field(2048, ge=1)  # cap on the request's max_tokens (codec frames per sentence)
    sentence_max_chars: int = Field(300, ge=20)
    max_sentences: int = Field(100, ge=1)  # sentences one job's message may split into (rejected above)
    # Codec frames (~46 ms each) one job may generate over all its sentences: max_tokens bounds one
    # sentence only. A job reaching it fails (see docs/limits.md); 6000 frames is about 4.6 minutes.
    max_job_frames: int = Field(6000, ge=1)
    reference_max_seconds: float = Field(30.0, gt=0)
    reference_max_bytes: int = Field(16 * 1024 * 1024, gt=0)  # decoded WAV bytes
    reference_cache_size: int = Field(32, ge=0)  # encoded voices kept in memory, by content hash

    # Worker
    log_level: str = "INFO"
    # Jobs one worker runs at once (runpod's concurrency_modifier); their decoding steps are batched.
    # Unset: on a GPU, as many typical jobs (30 s reference + 1,000 frames) as the KV pool holds; CPU: 4.
    max_concurrency: int | None = Field(None, ge=1, le=64)
    # KV-cache page pool, in tokens of context shared by all jobs (each holds prompt + max_tokens).
    # Unset: on a GPU the memory free after loading, less a workspace; CPU: max_concurrency typical jobs.
    kv_cache_tokens: int | None = Field(None, ge=64)
    # Streamed jobs: first audio after this many codec frames (~46 ms each), later chunks 2×, 4× ... up to
    # 64 frames; each window is decoded with this many frames of left context so the joins are seamless.
    stream_first_frames: int = Field(8, ge=1)
    stream_context_frames: int = Field(16, ge=0)
    # torch.compile the batched decode step (kill switch, off by default: compiling costs start-up time
    # and has not been measured on a GPU here; the warm-up job triggers the first compilation).
    compile: bool = False

    # Chat mode and conversations (fish_worker/dialogue/turns.py)
    chat_model_dir: Path | None = None  # a local Hugging Face chat model; set: loaded at start, chat mode on
    chat_system_prompt: str = (
        "You are a friendly voice assistant. Your replies are spoken aloud: answer briefly, "
        "in plain sentences, without lists, markup or emoji."
    )
    chat_frames_per_sentence: int = Field(1000, ge=1)  # codec frames budget per spoken reply sentence
    # REDIS_URL as well: the name every Redis client and hosting template uses.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("FISH_REDIS_URL", "REDIS_URL"))
    conversation_ttl_s: int = Field(3600, ge=1)  # a conversation expires this long after its last turn
    max_conversations: int = Field(1000, ge=1)  # in-process store only; Redis is bounded by its own policy

    # Saved voices (fish_worker/tts/voices.py): a directory on the network volume, shared by workers.
    voices_dir: Path = Path("/runpod-volume/voices")
    max_voices: int = Field(1000, ge=1)  # save_voice of a new voice_id fails once this many are saved

    # Results over RunPod's size limits go to this S3-compatible bucket when set (storage/s3.py);
    # credentials left empty come from boto3's usual chain (AWS_* variables).
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str | None = None
    s3_key_prefix: str = "fish-speech"
    s3_url_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
