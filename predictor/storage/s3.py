"""Outputs in S3-compatible object storage: clients download straight from the bucket.

``--output-store s3://bucket/prefix``. URLs are presigned GETs valid for the output TTL, or, with
``--s3-public-url``, that base plus the object key (a public bucket or a CDN in front of it).
Credentials and endpoint come from boto3's usual sources (``AWS_ACCESS_KEY_ID``, instance roles,
``AWS_ENDPOINT_URL``) or ``--s3-endpoint-url``. Expiry is the bucket's lifecycle rule's job.

An upload is tried :data:`ATTEMPTS` times (botocore's standard retry mode: exponential backoff with
jitter, at most 1, 2, 4 s between tries), each with connect and read timeouts; then the request
ends with a 503 ``store_unavailable`` (and its webhook), the failure is logged and counted
(``upscaler_output_store_failures{store="s3"}``).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from predictor import metrics
from predictor.errors import store_unavailable
from predictor.storage.base import StoredFile, new_file_name

log = logging.getLogger("predictor.storage.s3")

#: tries per upload (the first and its retries), and each try's timeouts in seconds
ATTEMPTS = 4
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 15.0


def client_config() -> Config:
    """Bounded retries with backoff and timeouts: an upload to a store that is down ends in
    seconds, not minutes."""
    return Config(
        signature_version="s3v4",
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, "some/prefix/")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3OutputStore:
    def __init__(
        self,
        url: str,
        ttl_s: float,
        endpoint_url: str | None = None,
        public_url: str | None = None,
        client=None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.ttl_s = ttl_s
        self.public_url = public_url.rstrip("/") if public_url else None
        self.client = client or boto3.client(
            "s3", endpoint_url=endpoint_url, config=client_config()
        )

    def _key(self, file_name: str) -> str:
        return f"{self.prefix}{file_name}"

    def put(self, data: bytes, content_type: str, extension: str) -> str:
        name = new_file_name(extension)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(name),
                Body=data,
                ContentType=content_type,
                CacheControl="private, immutable",
            )
        except (BotoCoreError, ClientError) as exc:  # after botocore's own retries
            metrics.OUTPUT_STORE_FAILURES.labels("s3").inc()
            log.error(
                "output s3://%s/%s not stored after %d tries: %s",
                self.bucket,
                self._key(name),
                ATTEMPTS,
                exc,
            )
            raise store_unavailable("output store (S3)", exc) from None
        return name

    def get(self, file_name: str) -> StoredFile | None:
        """Objects are served by the bucket; ``/files/`` does not proxy them."""
        return None

    def url(self, file_name: str, base_url: str) -> str:
        if self.public_url:
            return f"{self.public_url}/{self._key(file_name)}"
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(file_name)},
            ExpiresIn=max(1, round(self.ttl_s)),
        )
