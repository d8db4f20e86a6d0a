"""Outputs in Redis, shared by every replica: one key per file, expiring with the output TTL."""

from __future__ import annotations

import time

import redis

from predictor.storage.base import StoredFile, files_url, new_file_name


class RedisOutputStore:
    """``SET <prefix>:file:<name>`` (content type and bytes) with ``EX ttl``; Redis evicts."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float, max_file_bytes: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_file_bytes = max_file_bytes

    def _key(self, file_name: str) -> str:
        return f"{self.prefix}:file:{file_name}"

    def put(self, data: bytes, content_type: str, extension: str) -> str:
        if len(data) > self.max_file_bytes:
            raise ValueError(f"output of {len(data)} bytes exceeds {self.max_file_bytes}")
        name = new_file_name(extension)
        self.client.set(
            self._key(name), content_type.encode() + b"\n" + data, ex=max(1, round(self.ttl_s))
        )
        return name

    def get(self, file_name: str) -> StoredFile | None:
        with self.client.pipeline() as pipe:
            pipe.get(self._key(file_name))
            pipe.ttl(self._key(file_name))
            value, ttl = pipe.execute()
        if value is None:
            return None
        content_type, _, data = value.partition(b"\n")
        return StoredFile(data, content_type.decode(), time.monotonic() + max(ttl, 0))

    def url(self, file_name: str, base_url: str) -> str:
        return files_url(file_name, base_url)
