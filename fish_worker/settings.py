"""All configuration, read once from the environment at an entry point (see README "Environment variables").

One `Settings` with sections: the top level (model, request limits, worker), `server`, `storage`
(`storage.s3`), `chat` and `asr`. Each section is its own BaseSettings, built when Settings is, so every
variable keeps its flat name (FISH_API_KEYS, PORT, FISH_S3_BUCKET, REDIS_URL, FISH_CHAT_MODEL_DIR ...).
Entry points build it once and pass it down; nothing below them reads the environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from fish_worker.tenancy import TENANT_PATTERN

# Room in a body for everything but the reference audio's base64 (text, prompts, field names).
BODY_MARGIN_BYTES = 1024 * 1024


RUNPOD_VOLUME = Path("/runpod-volume")


def configure_logging(level: str) -> None:
    """The process's log lines at `level` (FISH_LOG_LEVEL), in the one format of every entry point
    (the worker, the server, the quick start), to stderr. Called once, by the entry point."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def default_voices_dir() -> Path:
    """The network volume's voices folder on RunPod (where the volume is mounted); elsewhere the user's
    data directory, so a self-hosted server never creates folders at the filesystem root."""
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "voices"
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "fish-worker" / "voices"


def _empty_is_unset(value: object) -> object:
    # Hosting templates leave optional variables as "": that means "not set", not an empty name.
    return None if value == "" else value


class _FlatEnvSource(EnvSettingsSource):
    """The environment, less the sections: a section reads its own flat variables when it is built,
    so a stray FISH_SERVER or FISH_S3 variable means nothing (as before there were sections)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            return None, field_name, False
        return super().get_field_value(field, field_name)


class _WithSections(BaseSettings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvSource(settings_cls), dotenv_settings, file_secret_settings


class ServerSettings(BaseSettings):
    """The self-hosted server (`python -m fish_worker.server`)."""

    # forbid: a misspelt keyword is an error (environment variables are read by field name only).
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="forbid")

    # Comma-separated bearer keys, each its own tenant: "alice:KEY1,bob:KEY2", or plain "KEY1,KEY2"
    # (tenant named by a short hash of the key). Requests without one of them get 401.
    api_keys: str = ""
    auth_disabled: bool = False  # the only way to serve without keys: it has to be said explicitly
    enable_docs: bool = False  # /docs, /redoc and /openapi.json
    host: str = "0.0.0.0"
    # PORT / PORT_HEALTH: what RunPod load-balancing endpoints set. Health unset: /ping on `port`.
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("port", "PORT", "FISH_PORT"))
    port_health: int | None = Field(
        None, ge=1, le=65535, validation_alias=AliasChoices("port_health", "PORT_HEALTH", "FISH_PORT_HEALTH")
    )
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
    # With REDIS_URL: a replica renews a lease on each /v2 job it runs; a job whose lease is not renewed for
    # this long (its replica died) is reported FAILED by the next poll or sweep (server/redis_jobs.py).
    job_lease_s: float = Field(10, ge=1)
    runsync_wait_s: float = Field(90, gt=0)  # /v2 runsync answers IN_PROGRESS after this, as RunPod does
    # Largest request body; unset: base64 of the largest audio file a field accepts (FISH_REFERENCE_MAX_BYTES,
    # FISH_ASR_MAX_BYTES) plus 1 MiB for the rest.
    max_body_bytes: int | None = Field(None, ge=1)
    # Bodies being read or served at once (admission before parsing, server/body_admission.py): their
    # bytes (Content-Length, or the largest body when chunked) on the whole server and per tenant; a body
    # that does not fit waits up to body_permit_wait_s, then 429. Unset: 8 and 4 of the largest body.
    body_budget_bytes: int | None = Field(None, ge=1)
    body_budget_per_tenant_bytes: int | None = Field(None, ge=1)
    body_permit_wait_s: float = Field(10, ge=0)
    header_timeout_s: float = Field(10, gt=0)  # a request's headers must arrive within this
    body_timeout_s: float = Field(60, gt=0)  # ... and its body within this, once the headers are in
    keep_alive_timeout_s: int = Field(5, ge=1)  # an idle keep-alive connection is closed after this
    # A client that reads nothing of its answer (HTTP body, WebSocket message) for this long is disconnected.
    send_timeout_s: float = Field(30, gt=0)
    # Fish live WebSocket sessions (/v1/tts/live): each is one admitted job for its whole life.
    # Ended when nothing went either way for this long. pipecat keeps one session per conversation,
    # silent while the user talks: a short bound ends it mid-conversation (an error, a reconnect).
    live_idle_timeout_s: float = Field(600, gt=0)
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

    def body_budget(self, reference_max_bytes: int) -> tuple[int, int]:
        """(server, per-tenant) bytes of request bodies in flight at once."""
        largest = self.body_limit(reference_max_bytes)
        total = self.body_budget_bytes or 8 * largest
        return total, min(total, self.body_budget_per_tenant_bytes or 4 * largest)


class S3Settings(BaseSettings):
    """Results over RunPod's size limits go to this S3-compatible bucket when set (storage/s3.py).

    Credentials left unset (or empty) come from boto3's usual chain (AWS_* variables).
    """

    model_config = SettingsConfigDict(env_prefix="FISH_S3_", extra="forbid")

    bucket: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    key_prefix: str = "fish-speech"
    url_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)

    _unset_when_empty = field_validator(
        "bucket", "endpoint_url", "access_key_id", "secret_access_key", "region", mode="before"
    )(_empty_is_unset)


class StorageSettings(_WithSections):
    """What outlives a job: saved voices, conversations, large results."""

    model_config = SettingsConfigDict(env_prefix="FISH_", extra="forbid")

    # Saved voices (fish_worker/tts/voices.py): a directory on the network volume, shared by workers.
    voices_dir: Path = Field(default_factory=default_voices_dir)
    max_voices: int = Field(1000, ge=1)  # save_voice of a new voice_id fails once this many are saved
    # Conversations (fish_worker/conversations/): in-process, or in Redis when a URL is set.
    # REDIS_URL as well: the name every Redis client and hosting template uses.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("redis_url", "FISH_REDIS_URL", "REDIS_URL"))
    conversation_ttl_s: int = Field(3600, ge=1)  # a conversation expires this long after its last turn
    max_conversations: int = Field(1000, ge=1)  # in-process store only; Redis is bounded by its own policy
    s3: S3Settings = Field(default_factory=S3Settings)

    _unset_when_empty = field_validator("redis_url", mode="before")(_empty_is_unset)


class ChatSettings(BaseSettings):
    """Chat mode (fish_worker/dialogue/turns.py): on when a chat backend is set, a local model directory
    or a remote OpenAI-compatible engine's URL (fish_worker/dialogue/backend.py), never both."""

    model_config = SettingsConfigDict(env_prefix="FISH_CHAT_", extra="forbid")

    model_dir: Path | None = None  # FISH_CHAT_MODEL_DIR: a local Hugging Face chat model, loaded at start
    # FISH_CHAT_BASE_URL: an OpenAI-compatible engine (vLLM, SGLang, RunPod's /openai/v1, transformers serve)
    # that writes the replies instead; the worker then loads no chat weights.
    base_url: str | None = None
    api_key: str | None = Field(None, repr=False)  # sent as `Authorization: Bearer ...`
    model: str | None = None  # the model name sent; unset: the first one the engine lists at /models
    connect_timeout_s: float = Field(10.0, gt=0)  # to open a connection to the engine
    read_timeout_s: float = Field(60.0, gt=0)  # longest wait for the reply's first or next piece
    max_retries: int = Field(1, ge=0, le=10)  # of a request failing before its answer starts (never mid-stream)
    system_prompt: str = (
        "You are a friendly voice assistant. Your replies are spoken aloud: answer briefly, "
        "in plain sentences, without lists, markup or emoji."
    )
    frames_per_sentence: int = Field(1000, ge=1)  # codec frames budget per spoken reply sentence
    # Local model: replies decoded together in one step (more wait for a row); sizes its KV reserve.
    max_batch: int = Field(8, ge=1, le=64)

    _unset_when_empty = field_validator("model_dir", "base_url", "api_key", "model", mode="before")(_empty_is_unset)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("FISH_CHAT_BASE_URL must be an http:// or https:// URL (the engine's /v1 root)")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> "ChatSettings":
        if self.model_dir is not None and self.base_url is not None:
            raise ValueError(
                "set FISH_CHAT_MODEL_DIR (a local chat model) or FISH_CHAT_BASE_URL (a remote engine), not both"
            )
        return self


class AsrSettings(BaseSettings):
    """Speech in (fish_worker/asr/): on when a recognizer is set, a local Whisper directory or a remote
    OpenAI-compatible transcription server's URL, never both."""

    model_config = SettingsConfigDict(env_prefix="FISH_ASR_", extra="forbid")

    model_dir: Path | None = None  # FISH_ASR_MODEL_DIR: a local Hugging Face Whisper model, loaded at start
    # FISH_ASR_BASE_URL: an OpenAI-compatible server (speaches, faster-whisper-server, vLLM) whose
    # /audio/transcriptions transcribes instead; the worker then loads no Whisper weights.
    base_url: str | None = None
    api_key: str | None = Field(None, repr=False)  # sent as `Authorization: Bearer ...`
    model: str = "whisper-1"  # the model name sent to the remote server
    connect_timeout_s: float = Field(10.0, gt=0)  # to open a connection to the server
    timeout_s: float = Field(60.0, gt=0)  # longest wait for the server's answer to one transcription
    # Input audio, on every door: its length once decoded and its file's bytes. The bytes default
    # matches FISH_REFERENCE_MAX_BYTES, which sizes the largest request body.
    max_seconds: float = Field(120.0, gt=0)
    max_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # Local model: transcriptions (of at most 30 s each) run through the model together; more wait.
    max_batch: int = Field(8, ge=1, le=64)

    _unset_when_empty = field_validator("model_dir", "base_url", "api_key", mode="before")(_empty_is_unset)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("FISH_ASR_BASE_URL must be an http:// or https:// URL (the server's /v1 root)")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> "AsrSettings":
        if self.model_dir is not None and self.base_url is not None:
            raise ValueError(
                "set FISH_ASR_MODEL_DIR (a local Whisper model) or FISH_ASR_BASE_URL (a remote server), not both"
            )
        return self


class Settings(_WithSections):
    model_config = SettingsConfigDict(env_prefix="FISH_", extra="forbid")

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
    # 64 frames. Each sentence's codec stream carries its transformer's state from window to window and
    # gives the convolutions this many frames of left context (their reach: 9), so the windows join into
    # the one-shot decode (engine/codec_stream.py); below 9 the joins differ.
    stream_first_frames: int = Field(8, ge=1)
    stream_context_frames: int = Field(16, ge=0)
    # Concurrent jobs' codec decodes run as one padded batch of at most this many frames (rows × the
    # longest), one batch at a time. Unset: 1024 on a GPU; 0 (off: each job decodes on its own thread)
    # on the CPU, where a batch measured slower than the same decodes one by one.
    codec_batch_frames: int | None = Field(None, ge=0, le=65536)
    # torch.compile the batched decode step (kill switch, off by default: compiling costs start-up time
    # and has not been measured on a GPU here; the warm-up job triggers the first compilation).
    compile: bool = False

    # Sections, each reading its own flat variables when Settings is built.
    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    asr: AsrSettings = Field(default_factory=AsrSettings)

    @property
    def audio_max_bytes(self) -> int:
        """The largest audio file any input field accepts (a reference clip, a voice message): sizes bodies."""
        return max(self.reference_max_bytes, self.asr.max_bytes)


def parse_api_keys(text: str) -> dict[str, str]:
    """ "alice:KEY1,bob:KEY2,KEY3" → {KEY1: alice, KEY2: bob, KEY3: key-<hash>}.

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
