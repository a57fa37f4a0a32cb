"""S3 upload against a real S3-compatible HTTP server (moto in server mode) started here."""

import socket
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from fish_worker.storage import S3UploadError, S3Uploader

BUCKET = "fish-results"
CREDENTIALS = {"access_key_id": "test-key", "secret_access_key": "test-secret"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="test-key", aws_secret_access_key="test-secret",
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture(autouse=True)
def no_ambient_aws_config(monkeypatch, tmp_path):
    """Only what the test passes counts: no AWS_* variables, profiles or instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_upload_returns_a_presigned_url_that_downloads_the_same_bytes(endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=endpoint, key_prefix="/jobs/", url_expiry_s=600, **CREDENTIALS)
    data = np.random.default_rng(0).bytes(3_000_000)  # bigger than a streamed chunk may be

    uploaded = uploader.upload(data, suffix=".wav", content_type="audio/wav")

    assert uploaded.key.startswith("jobs/") and uploaded.key.endswith(".wav")
    assert uploaded.size == len(data) and uploaded.expires_in_s == 600
    query = parse_qs(urlparse(uploaded.url).query)
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
    response = httpx.get(uploaded.url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "audio/wav"


def test_each_upload_gets_its_own_key(endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=endpoint, **CREDENTIALS)
    first, second = uploader.upload(b"one"), uploader.upload(b"two")
    assert first.key != second.key and "/" not in first.key
    assert httpx.get(first.url).content == b"one"
    assert httpx.get(second.url).content == b"two"


def test_missing_bucket_is_a_clear_error(endpoint):
    uploader = S3Uploader("no-such-bucket", endpoint_url=endpoint, **CREDENTIALS)
    with pytest.raises(S3UploadError, match=r"'no-such-bucket'.*NoSuchBucket"):
        uploader.upload(b"data")


def test_unreachable_endpoint_is_a_clear_error():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    uploader = S3Uploader(BUCKET, endpoint_url=dead, max_attempts=1, connect_timeout_s=2, **CREDENTIALS)
    with pytest.raises(S3UploadError, match=rf"{BUCKET}.*{dead}.*failed"):
        uploader.upload(b"data")


def test_missing_credentials_is_a_clear_error(endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=endpoint)
    with pytest.raises(S3UploadError, match="credentials"):
        uploader.upload(b"data")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bucket": ""}, "bucket"),
        ({"bucket": BUCKET, "url_expiry_s": 0}, "url_expiry_s"),
        ({"bucket": BUCKET, "url_expiry_s": 8 * 24 * 3600}, "7 days"),
    ],
)
def test_bad_settings_are_rejected_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S3Uploader(**kwargs, endpoint_url="http://127.0.0.1:9", **CREDENTIALS)
