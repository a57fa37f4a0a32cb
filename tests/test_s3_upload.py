"""S3 upload against a real S3-compatible HTTP server (moto in server mode) started here."""

from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest

from fish_worker.storage import S3UploadError, S3Uploader
from helpers import BUCKET, CREDENTIALS, free_port

pytestmark = pytest.mark.usefixtures("no_ambient_aws_config")


def test_upload_returns_a_presigned_url_that_downloads_the_same_bytes(s3_endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=s3_endpoint, key_prefix="/jobs/", url_expiry_s=600, **CREDENTIALS)
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


def test_each_upload_gets_its_own_key(s3_endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=s3_endpoint, **CREDENTIALS)
    first, second = uploader.upload(b"one"), uploader.upload(b"two")
    assert first.key != second.key and "/" not in first.key
    assert httpx.get(first.url).content == b"one"
    assert httpx.get(second.url).content == b"two"


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    uploader = S3Uploader("no-such-bucket", endpoint_url=s3_endpoint, **CREDENTIALS)
    with pytest.raises(S3UploadError, match=r"'no-such-bucket'.*NoSuchBucket"):
        uploader.upload(b"data")


def test_unreachable_endpoint_is_a_clear_error():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    uploader = S3Uploader(BUCKET, endpoint_url=dead, max_attempts=1, connect_timeout_s=2, **CREDENTIALS)
    with pytest.raises(S3UploadError, match=rf"{BUCKET}.*{dead}.*failed"):
        uploader.upload(b"data")


def test_missing_credentials_is_a_clear_error(s3_endpoint):
    uploader = S3Uploader(BUCKET, endpoint_url=s3_endpoint)
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
