"""Outputs in Redis, shared by every replica: one key per file, expiring with the output TTL."""

from __future__ import annotations

import logging
import time

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from predictor import metrics
from predictor.errors import store_unavailable
from predictor.storage.base import StoredFile, files_url, new_file_name

log = logging.getLogger("predictor.storage.redis")

#: what counts as Redis being away (after the client's bounded, jittered retries)
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def connect(url: str) -> redis.Redis:
    """A client that gives up within seconds (timeouts, two jittered retries), never hangs."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.1), 2),
        retry_on_error=list(UNREACHABLE),
        health_check_interval=10,
    )


class RedisOutputStore:
    """``SET <prefix>:file:<name>`` (content type and bytes) with ``EX ttl``; Redis evicts.

    Redis away: :meth:`put` and :meth:`get` raise a 503 ``store_unavailable`` (the request
    ends with that status and its webhook; ``/files/`` answers it)."""

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
        try:
            self.client.set(
                self._key(name), content_type.encode() + b"\n" + data, ex=max(1, round(self.ttl_s))
            )
        except UNREACHABLE as exc:
            metrics.OUTPUT_STORE_FAILURES.labels("redis").inc()
            log.error("output %s not stored: redis unreachable (%s)", name, exc)
            raise store_unavailable("output store (Redis)", exc) from None
        return name

    def get(self, file_name: str) -> StoredFile | None:
        try:
            with self.client.pipeline() as pipe:
                pipe.get(self._key(file_name))
                pipe.ttl(self._key(file_name))
                value, ttl = pipe.execute()
        except UNREACHABLE as exc:
            raise store_unavailable("output store (Redis)", exc) from None
        if value is None:
            return None
        content_type, _, data = value.partition(b"\n")
        return StoredFile(data, content_type.decode(), time.monotonic() + max(ttl, 0))

    def url(self, file_name: str, base_url: str) -> str:
        return files_url(file_name, base_url)
