"""Where large results go when they don't fit in a RunPod response."""

from fish_worker.storage.s3 import MAX_URL_EXPIRY_S, S3UploadError, S3Uploader, UploadedObject

__all__ = ["MAX_URL_EXPIRY_S", "S3UploadError", "S3Uploader", "UploadedObject"]
