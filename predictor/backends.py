"""Pick the queue and output store the settings ask for: in process, Redis, or S3."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from predictor.config import Settings
from predictor.journey import Upscaler
from predictor.queue import LocalQueue, Outcome, QueueBackend
from predictor.store import MemoryOutputStore, OutputStore


def open_output_store(settings: Settings) -> OutputStore:
    """``--output-store memory|redis|s3://bucket/prefix`` (redis needs ``--redis-url``)."""
    kind = settings.output_store
    if kind == "memory":
        return MemoryOutputStore(settings.output_store_bytes, settings.output_ttl_s)
    if kind == "redis":
        import redis

        from predictor.store_redis import RedisOutputStore

        assert settings.redis_url, "--output-store redis needs --redis-url"
        return RedisOutputStore(
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
            settings.output_ttl_s,
            settings.output_store_bytes,
        )
    if kind.startswith("s3://"):
        from predictor.store_s3 import S3OutputStore

        return S3OutputStore(
            kind, settings.output_ttl_s, settings.s3_endpoint_url, settings.s3_public_url
        )
    raise ValueError(f"--output-store {kind!r}: expected memory, redis or s3://bucket/prefix")


def open_queue(
    upscaler: Upscaler,
    settings: Settings,
    on_finished: Callable[[str, str | None, Outcome], Awaitable[None]] | None = None,
) -> QueueBackend:
    """In process by default; shared by every replica with ``--redis-url``."""
    if not settings.redis_url:
        return LocalQueue(upscaler, settings.queue_result_ttl_s, on_finished)
    from predictor.redis_queue import RedisQueue

    return RedisQueue(
        upscaler,
        settings.queue_result_ttl_s,
        on_finished,
        redis_url=settings.redis_url,
        prefix=settings.redis_prefix,
        max_queued=settings.max_queued,
        lease_s=settings.queue_lease_s,
        max_attempts=settings.queue_max_attempts,
    )
