"""One Settings: every documented variable keeps its flat name, read back through its section."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fish_worker.errors import JobInputError
from fish_worker.jobs.inputs import JobInput, parse_job_input
from fish_worker.jobs.outputs import uploader_from_settings
from fish_worker import settings as settings_module
from fish_worker.settings import S3Settings, ServerSettings, Settings, StorageSettings, default_voices_dir

# name → (value to set, where Settings shows it, the value read back)
VARIABLES = {
    "FISH_CHECKPOINT_DIR": ("/ckpt", lambda s: s.checkpoint_dir, Path("/ckpt")),
    "FISH_DEVICE": ("cpu", lambda s: s.device, "cpu"),
    "FISH_PRECISION": ("float16", lambda s: s.precision, "float16"),
    "FISH_DOWNLOAD_MISSING": ("false", lambda s: s.download_missing, False),
    "FISH_WARMUP": ("false", lambda s: s.warmup, False),
    "FISH_MAX_TEXT_CHARS": ("11", lambda s: s.max_text_chars, 11),
    "FISH_MAX_TOKENS_LIMIT": ("12", lambda s: s.max_tokens_limit, 12),
    "FISH_SENTENCE_MAX_CHARS": ("21", lambda s: s.sentence_max_chars, 21),
    "FISH_MAX_SENTENCES": ("13", lambda s: s.max_sentences, 13),
    "FISH_MAX_JOB_FRAMES": ("14", lambda s: s.max_job_frames, 14),
    "FISH_REFERENCE_MAX_SECONDS": ("1.5", lambda s: s.reference_max_seconds, 1.5),
    "FISH_REFERENCE_MAX_BYTES": ("15", lambda s: s.reference_max_bytes, 15),
    "FISH_REFERENCE_CACHE_SIZE": ("16", lambda s: s.reference_cache_size, 16),
    "FISH_LOG_LEVEL": ("DEBUG", lambda s: s.log_level, "DEBUG"),
    "FISH_MAX_CONCURRENCY": ("3", lambda s: s.max_concurrency, 3),
    "FISH_KV_CACHE_TOKENS": ("4096", lambda s: s.kv_cache_tokens, 4096),
    "FISH_STREAM_FIRST_FRAMES": ("17", lambda s: s.stream_first_frames, 17),
    "FISH_STREAM_CONTEXT_FRAMES": ("18", lambda s: s.stream_context_frames, 18),
    "FISH_COMPILE": ("true", lambda s: s.compile, True),
    "FISH_CODEC_BATCH_FRAMES": ("256", lambda s: s.codec_batch_frames, 256),
    # server
    "FISH_API_KEYS": ("alice:k1,k2", lambda s: s.server.api_keys, "alice:k1,k2"),
    "FISH_AUTH_DISABLED": ("true", lambda s: s.server.auth_disabled, True),
    "FISH_ENABLE_DOCS": ("true", lambda s: s.server.enable_docs, True),
    "FISH_HOST": ("127.0.0.1", lambda s: s.server.host, "127.0.0.1"),
    "PORT": ("9001", lambda s: s.server.port, 9001),
    "PORT_HEALTH": ("9002", lambda s: s.server.port_health, 9002),
    "FISH_MAX_CONCURRENT_JOBS": ("2", lambda s: s.server.max_concurrent_jobs, 2),
    "FISH_MAX_QUEUED_JOBS": ("19", lambda s: s.server.max_queued_jobs, 19),
    "FISH_MAX_QUEUED_JOBS_PER_TENANT": ("20", lambda s: s.server.max_queued_jobs_per_tenant, 20),
    "FISH_RETRY_AFTER_S": ("7", lambda s: s.server.retry_after_s, 7),
    "FISH_JOB_TTL_S": ("22", lambda s: s.server.job_ttl_s, 22.0),
    "FISH_MAX_STORED_JOBS": ("23", lambda s: s.server.max_stored_jobs, 23),
    "FISH_MAX_STORED_RESULT_BYTES": ("24", lambda s: s.server.max_stored_result_bytes, 24),
    "FISH_RUNSYNC_WAIT_S": ("25", lambda s: s.server.runsync_wait_s, 25.0),
    "FISH_JOB_LEASE_S": ("4", lambda s: s.server.job_lease_s, 4.0),
    "FISH_MAX_BODY_BYTES": ("26", lambda s: s.server.max_body_bytes, 26),
    "FISH_HEADER_TIMEOUT_S": ("27", lambda s: s.server.header_timeout_s, 27.0),
    "FISH_BODY_BUDGET_BYTES": ("271", lambda s: s.server.body_budget_bytes, 271),
    "FISH_BODY_BUDGET_PER_TENANT_BYTES": ("272", lambda s: s.server.body_budget_per_tenant_bytes, 272),
    "FISH_BODY_PERMIT_WAIT_S": ("273", lambda s: s.server.body_permit_wait_s, 273.0),
    "FISH_BODY_TIMEOUT_S": ("28", lambda s: s.server.body_timeout_s, 28.0),
    "FISH_KEEP_ALIVE_TIMEOUT_S": ("29", lambda s: s.server.keep_alive_timeout_s, 29),
    "FISH_SEND_TIMEOUT_S": ("33.5", lambda s: s.server.send_timeout_s, 33.5),
    "FISH_LIVE_IDLE_TIMEOUT_S": ("30", lambda s: s.server.live_idle_timeout_s, 30.0),
    "FISH_LIVE_MAX_SESSION_S": ("31", lambda s: s.server.live_max_session_s, 31.0),
    "FISH_LIVE_MAX_TEXT_CHARS": ("32", lambda s: s.server.live_max_text_chars, 32),
    "FISH_PLAYGROUND": ("false", lambda s: s.server.playground, False),
    # storage
    "FISH_VOICES_DIR": ("/voices", lambda s: s.storage.voices_dir, Path("/voices")),
    "FISH_MAX_VOICES": ("33", lambda s: s.storage.max_voices, 33),
    "REDIS_URL": ("redis://r:6379/0", lambda s: s.storage.redis_url, "redis://r:6379/0"),
    "FISH_CONVERSATION_TTL_S": ("34", lambda s: s.storage.conversation_ttl_s, 34),
    "FISH_MAX_CONVERSATIONS": ("35", lambda s: s.storage.max_conversations, 35),
    "FISH_S3_BUCKET": ("b", lambda s: s.storage.s3.bucket, "b"),
    "FISH_S3_ENDPOINT_URL": ("http://s3", lambda s: s.storage.s3.endpoint_url, "http://s3"),
    "FISH_S3_ACCESS_KEY_ID": ("id", lambda s: s.storage.s3.access_key_id, "id"),
    "FISH_S3_SECRET_ACCESS_KEY": ("secret", lambda s: s.storage.s3.secret_access_key, "secret"),
    "FISH_S3_REGION": ("eu-west-1", lambda s: s.storage.s3.region, "eu-west-1"),
    "FISH_S3_KEY_PREFIX": ("jobs", lambda s: s.storage.s3.key_prefix, "jobs"),
    "FISH_S3_URL_EXPIRY_S": ("36", lambda s: s.storage.s3.url_expiry_s, 36),
    # chat
    "FISH_CHAT_MODEL_DIR": ("/chat", lambda s: s.chat.model_dir, Path("/chat")),
    "FISH_CHAT_SYSTEM_PROMPT": ("Be brief.", lambda s: s.chat.system_prompt, "Be brief."),
    "FISH_CHAT_FRAMES_PER_SENTENCE": ("37", lambda s: s.chat.frames_per_sentence, 37),
    "FISH_CHAT_MAX_BATCH": ("3", lambda s: s.chat.max_batch, 3),
    "FISH_CHAT_BASE_URL": ("http://engine:8000/v1", lambda s: s.chat.base_url, "http://engine:8000/v1"),
    "FISH_CHAT_API_KEY": ("chat-key", lambda s: s.chat.api_key, "chat-key"),
    "FISH_CHAT_MODEL": ("Qwen/Qwen2.5-1.5B-Instruct", lambda s: s.chat.model, "Qwen/Qwen2.5-1.5B-Instruct"),
    "FISH_CHAT_CONNECT_TIMEOUT_S": ("3.5", lambda s: s.chat.connect_timeout_s, 3.5),
    "FISH_CHAT_READ_TIMEOUT_S": ("38", lambda s: s.chat.read_timeout_s, 38.0),
    "FISH_CHAT_MAX_RETRIES": ("2", lambda s: s.chat.max_retries, 2),
    "FISH_ASR_MODEL_DIR": ("/whisper", lambda s: s.asr.model_dir, Path("/whisper")),
    "FISH_ASR_BASE_URL": ("http://speaches:8000/v1", lambda s: s.asr.base_url, "http://speaches:8000/v1"),
    "FISH_ASR_API_KEY": ("asr-key", lambda s: s.asr.api_key, "asr-key"),
    "FISH_ASR_MODEL": ("Systran/faster-whisper-small", lambda s: s.asr.model, "Systran/faster-whisper-small"),
    "FISH_ASR_CONNECT_TIMEOUT_S": ("2.5", lambda s: s.asr.connect_timeout_s, 2.5),
    "FISH_ASR_TIMEOUT_S": ("45", lambda s: s.asr.timeout_s, 45.0),
    "FISH_ASR_MAX_SECONDS": ("90", lambda s: s.asr.max_seconds, 90.0),
    "FISH_ASR_MAX_BYTES": ("1048576", lambda s: s.asr.max_bytes, 1048576),
    "FISH_ASR_MAX_BATCH": ("4", lambda s: s.asr.max_batch, 4),
}
# Set together with the rest they would clash: each is read alone.
ALONE = {"FISH_CHAT_MODEL_DIR", "FISH_ASR_MODEL_DIR"}
# The other spellings that name the same thing.
ALIASES = {"FISH_PORT": "PORT", "FISH_PORT_HEALTH": "PORT_HEALTH", "FISH_REDIS_URL": "REDIS_URL"}


@pytest.fixture
def clean_env(monkeypatch):
    """No ambient FISH_* (or PORT, REDIS_URL) variable changes what a test reads."""
    for name in list(os.environ):
        if name.startswith("FISH_") or name in {"PORT", "PORT_HEALTH", "REDIS_URL"}:
            monkeypatch.delenv(name)
    return monkeypatch


def test_every_variable_is_read_into_its_section(clean_env):
    together = {name: entry for name, entry in VARIABLES.items() if name not in ALONE}
    for name, (value, _, _) in together.items():
        clean_env.setenv(name, value)
    settings = Settings()
    read = {name: where(settings) for name, (_, where, _) in together.items()}
    assert read == {name: expected for name, (_, _, expected) in together.items()}
    clean_env.delenv("FISH_CHAT_BASE_URL")  # the other chat backend
    clean_env.delenv("FISH_ASR_BASE_URL")  # the other recognizer
    for name in ALONE:
        value, where, expected = VARIABLES[name]
        clean_env.setenv(name, value)
        assert where(Settings()) == expected


def test_one_chat_backend_and_an_http_url(clean_env):
    clean_env.setenv("FISH_CHAT_MODEL_DIR", "/chat")
    clean_env.setenv("FISH_CHAT_BASE_URL", "http://engine:8000/v1")
    with pytest.raises(ValidationError, match="FISH_CHAT_MODEL_DIR .* or FISH_CHAT_BASE_URL .*, not both"):
        Settings()
    clean_env.delenv("FISH_CHAT_MODEL_DIR")
    clean_env.setenv("FISH_CHAT_BASE_URL", "engine:8000/v1")
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        Settings()
    clean_env.setenv("FISH_CHAT_BASE_URL", "")  # a template's empty value: no remote engine
    assert Settings().chat.base_url is None


def test_one_recognizer_and_an_http_url(clean_env):
    clean_env.setenv("FISH_ASR_MODEL_DIR", "/whisper")
    clean_env.setenv("FISH_ASR_BASE_URL", "http://speaches:8000/v1")
    with pytest.raises(ValidationError, match="FISH_ASR_MODEL_DIR .* or FISH_ASR_BASE_URL .*, not both"):
        Settings()
    clean_env.delenv("FISH_ASR_MODEL_DIR")
    clean_env.setenv("FISH_ASR_BASE_URL", "speaches:8000/v1")
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        Settings()
    clean_env.setenv("FISH_ASR_BASE_URL", "")  # a template's empty value: no remote server
    assert Settings().asr.base_url is None


def test_bodies_fit_the_largest_audio_field(clean_env):
    clean_env.setenv("FISH_ASR_MAX_BYTES", str(32 * 1024 * 1024))
    settings = Settings()
    assert settings.audio_max_bytes == 32 * 1024 * 1024 > settings.reference_max_bytes
    assert settings.server.body_limit(settings.audio_max_bytes) > 4 * 32 * 1024 * 1024 // 3


@pytest.mark.parametrize("alias, name", ALIASES.items())
def test_each_alias_still_names_its_field(clean_env, alias, name):
    value, where, expected = VARIABLES[name]
    clean_env.setenv(alias, value)
    assert where(Settings()) == expected


def test_every_documented_variable_is_in_the_table():
    root = Path(__file__).resolve().parent.parent
    text = "\n".join(path.read_text() for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    documented = set(re.findall(r"\b(FISH_[A-Z0-9_]*[A-Z0-9]|PORT_HEALTH|PORT|REDIS_URL)\b", text))
    documented.discard("FISH_SERVE")  # read by scripts/start.sh, not by Python
    assert documented <= set(VARIABLES) | set(ALIASES)


def test_defaults_without_any_variable(clean_env):
    settings = Settings()
    assert settings.server.port == 8000 and settings.server.port_health is None and settings.server.api_keys == ""
    assert settings.storage.voices_dir == default_voices_dir() and settings.storage.redis_url is None
    assert settings.storage.s3.bucket is None and settings.storage.s3.key_prefix == "fish-speech"
    # Concurrency and the KV pool are planned from the device when unset (TTSService.max_concurrency).
    assert settings.chat.model_dir is None and settings.max_concurrency is None and settings.kv_cache_tokens is None


def test_empty_variables_mean_unset(clean_env):
    # Hosting templates leave optional fields as "": no bucket (so no upload), boto3's own defaults.
    for name in (
        "FISH_S3_BUCKET",
        "FISH_S3_ENDPOINT_URL",
        "FISH_S3_ACCESS_KEY_ID",
        "FISH_S3_SECRET_ACCESS_KEY",
        "FISH_S3_REGION",
        "REDIS_URL",
        "FISH_CHAT_MODEL_DIR",
    ):
        clean_env.setenv(name, "")
    settings = Settings()
    s3 = settings.storage.s3
    assert (s3.bucket, s3.endpoint_url, s3.access_key_id, s3.secret_access_key, s3.region) == (None,) * 5
    assert settings.storage.redis_url is None and settings.chat.model_dir is None
    assert uploader_from_settings(s3) is None

    clean_env.setenv("FISH_S3_BUCKET", "results")
    uploader = uploader_from_settings(Settings().storage.s3)
    assert uploader is not None and uploader.bucket == "results"
    assert uploader.endpoint_url is None  # boto3's own endpoint, not ""


def test_a_variable_named_like_a_section_is_ignored(clean_env):
    for name in ("FISH_SERVER", "FISH_STORAGE", "FISH_CHAT", "FISH_S3"):
        clean_env.setenv(name, "not json")
    assert Settings().server.port == 8000


def test_misspelt_keywords_are_refused():
    with pytest.raises(ValidationError, match="voices_dir"):
        Settings(voices_dir="/v")  # it lives in storage now: silently ignoring it would write elsewhere
    with pytest.raises(ValidationError, match="bukket"):
        S3Settings(bukket="b")


def test_explicit_sections_win_over_the_environment(clean_env):
    clean_env.setenv("FISH_API_KEYS", "from-env")
    clean_env.setenv("FISH_VOICES_DIR", "/env-voices")
    settings = Settings(server=ServerSettings(api_keys="given"), storage=StorageSettings(voices_dir="/given"))
    assert settings.server.api_keys == "given" and settings.storage.voices_dir == Path("/given")
    assert Settings().server.api_keys == "from-env"


def test_validation_limits_come_from_the_given_settings_not_the_environment(clean_env):
    clean_env.setenv("FISH_MAX_TEXT_CHARS", "5")
    clean_env.setenv("FISH_MAX_TOKENS_LIMIT", "1")
    roomy = Settings(max_text_chars=100, max_tokens_limit=100)
    assert parse_job_input({"message": "Hello there.", "max_tokens": 50}, roomy).max_tokens == 50

    tight = Settings(max_text_chars=5, max_tokens_limit=100)
    with pytest.raises(JobInputError, match="message: is 12 characters, the limit is 5"):
        parse_job_input({"message": "Hello there."}, tight)
    # Built in code (warm-up job, tests): trusted, shape only; no environment read.
    assert JobInput(message="Hello there.", max_tokens=50).max_tokens == 50


def test_voices_stay_off_the_filesystem_root_without_a_runpod_volume(clean_env, monkeypatch, tmp_path):
    monkeypatch.setattr(settings_module, "RUNPOD_VOLUME", tmp_path / "absent")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings().storage.voices_dir == tmp_path / "data" / "fish-worker" / "voices"
    monkeypatch.setattr(settings_module, "RUNPOD_VOLUME", tmp_path)  # a mounted volume: shared by workers
    assert Settings().storage.voices_dir == tmp_path / "voices"


def test_body_budget_defaults_follow_the_largest_body(clean_env):
    server = ServerSettings(max_body_bytes=1000)
    assert server.body_budget(16 * 1024 * 1024) == (8000, 4000)
    assert ServerSettings(max_body_bytes=1000, body_budget_bytes=3000).body_budget(0) == (3000, 3000)  # share <= total
    assert ServerSettings(body_budget_bytes=10, body_budget_per_tenant_bytes=5).body_budget(0) == (10, 5)
