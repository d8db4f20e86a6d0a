"""Outputs in S3-compatible object storage: clients download straight from the bucket.

``--output-store s3://bucket/prefix``. URLs are presigned GETs valid for the output TTL, or, with
``--s3-public-url``, that base plus the object key (a public bucket or a CDN in front of it).
Credentials and endpoint come from boto3's usual sources (``AWS_ACCESS_KEY_ID``, instance roles,
``AWS_ENDPOINT_URL``) or ``--s3-endpoint-url``. Expiry is the bucket's lifecycle rule's job.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from predictor.storage.base import StoredFile, new_file_name


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
            "s3", endpoint_url=endpoint_url, config=Config(signature_version="s3v4")
        )

    def _key(self, file_name: str) -> str:
        return f"{self.prefix}{file_name}"

    def put(self, data: bytes, content_type: str, extension: str) -> str:
        name = new_file_name(extension)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
            ContentType=content_type,
            CacheControl="private, immutable",
        )
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
