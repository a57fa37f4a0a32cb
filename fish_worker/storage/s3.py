"""Upload of results too large for RunPod's response limits to an S3-compatible bucket.

Works with AWS S3 and S3-compatible services (Cloudflare R2, MinIO, Backblaze B2, ...): the
uploaded object is private and the caller gets a presigned GET URL that expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# SigV4 presigned URLs can't live longer than 7 days.
MAX_URL_EXPIRY_S = 7 * 24 * 3600


class S3UploadError(RuntimeError):
    """The upload or the URL signing failed; the message says where and why."""


@dataclass(frozen=True)
class UploadedObject:
    url: str  # presigned GET URL
    key: str
    size: int
    expires_in_s: int


class S3Uploader:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        key_prefix: str = "",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region_name: str | None = None,
        url_expiry_s: int = 3600,
        addressing_style: Literal["auto", "path", "virtual"] | None = None,
        connect_timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        """Credentials left as None come from boto3's usual chain (AWS_* variables, profiles).

        `addressing_style` defaults to "path" when `endpoint_url` is given, which every
        S3-compatible server accepts (most can't resolve bucket.host names), else "auto".
        """
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        if not 1 <= url_expiry_s <= MAX_URL_EXPIRY_S:
            raise ValueError(f"url_expiry_s must be between 1 and {MAX_URL_EXPIRY_S} (7 days); got {url_expiry_s}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.key_prefix = key_prefix.strip("/")
        self.url_expiry_s = url_expiry_s
        style = addressing_style or ("path" if endpoint_url else "auto")
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            connect_timeout=connect_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        try:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                aws_session_token=session_token,
                region_name=region_name,
                config=config,
            )
        except (BotoCoreError, ValueError) as error:
            raise S3UploadError(f"can't set up the S3 client for {self._where()}: {error}") from error

    def upload(
        self,
        data: bytes,
        *,
        suffix: str = "",
        content_type: str = "application/octet-stream",
    ) -> UploadedObject:
        """Store `data` under a new unique key (prefix/<random hex><suffix>); return its URL."""
        key = "/".join(filter(None, [self.key_prefix, f"{uuid.uuid4().hex}{suffix}"]))
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except ClientError as error:
            info = error.response.get("Error", {})
            raise S3UploadError(
                f"upload of {key!r} to {self._where()} was refused: "
                f"{info.get('Code', 'error')}: {info.get('Message', error)}"
            ) from error
        except BotoCoreError as error:
            raise S3UploadError(f"upload of {key!r} to {self._where()} failed: {error}") from error
        try:
            url = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.url_expiry_s,
            )
        except BotoCoreError as error:
            raise S3UploadError(f"can't sign a URL for {key!r} in {self._where()}: {error}") from error
        return UploadedObject(url=url, key=key, size=len(data), expires_in_s=self.url_expiry_s)

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"
