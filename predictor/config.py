"""Service settings: one frozen dataclass, filled from the command line (``predictor.cli``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from predictor.engines.options import EngineOptions, MiB, SROptions


@dataclass(frozen=True)
class FetchLimits:
    """How far ``image_url`` fetching may go; see ``predictor.fetch``."""

    allow_private_urls: bool = False
    max_bytes: int = 32 * MiB  # downloads and decoded data: URIs alike
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 30.0
    max_redirects: int = 3


@dataclass(frozen=True)
class Settings:
    """Everything the server needs; defaults are what a single replica should run with."""

    host: str = "127.0.0.1"
    port: int = 8080
    model_name: str = "chrono-upscaler"
    #: which engine runs, and how (its typed options name it)
    engine_options: EngineOptions = field(default_factory=SROptions)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    #: decoded input pixels (decompression bombs stop here) and planned output pixels
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 4096
    #: engine jobs that run at once, and requests allowed to wait for one
    max_inflight: int = 1
    max_waiting: int = 16
    #: whole-request deadline (waiting + fetch + engine + encode), seconds
    request_timeout_s: float = 300.0
    #: on SIGTERM, running work gets this long to finish before it is stopped (seconds)
    shutdown_grace_s: float = 25.0
    #: outputs served under /files/ when sync_mode is false
    output_ttl_s: float = 3600.0
    output_store_bytes: int = 1024 * MiB
    #: absolute base for output URLs (e.g. the public ingress); default: the request's own base URL
    public_url: str | None = None
    #: hourly price of the engine's device (GPU node share), for upscaler_cost_usd_total
    gpu_hourly_usd: float = 0.0
    #: the deployment's defaults for request fields a request leaves out (field name → value)
    request_defaults: dict[str, Any] = field(default_factory=dict)
    #: queued requests' results are kept this long after they finish, then 404
    queue_result_ttl_s: float = 3600.0
    #: share the queue (and optionally outputs) between replicas through this Redis
    redis_url: str | None = None
    redis_prefix: str = "chrono-upscaler"
    #: requests that may wait in a shared (Redis) queue before submits get 429
    max_queued: int = 1000
    #: a replica renews its claim on a running request this often ÷ 3; a dead one's lapses
    queue_lease_s: float = 30.0
    #: runs of one request (a replica dying mid-request costs one) before it fails
    queue_max_attempts: int = 3
    #: outputs: "memory", "redis" (needs redis_url) or "s3://bucket/prefix"; the flag's default
    #: is "redis" when redis_url is set, so that every replica serves every output
    output_store: str = "memory"
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None
    #: webhook delivery: HMAC secret, attempts and first backoff (doubling)
    webhook_secret: str | None = None
    webhook_attempts: int = 5
    webhook_backoff_s: float = 1.0
    #: when non-empty, inference routes need ``Authorization: Key <key>``
    api_keys: frozenset[str] = frozenset()
    #: serve KServe's model load/unload and explain (behind the key); off: anyone could unload
    enable_model_control: bool = False
    #: serve HTTPS with this certificate chain and key (PEM files)
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def engine(self) -> str:
        return self.engine_options.engine

    @property
    def queue_kind(self) -> str:
        """Where queued requests live: ``redis`` (shared) or ``in_process``."""
        return "redis" if self.redis_url else "in_process"

    @property
    def output_store_kind(self) -> str:
        """Where ``sync_mode: false`` outputs live: ``memory``, ``redis`` or ``s3``."""
        return "s3" if self.output_store.startswith("s3://") else self.output_store

    def single_replica_parts(self) -> list[str]:
        """What keeps this configuration from serving more than one replica (empty: nothing)."""
        parts = []
        if not self.redis_url:
            parts.append("the queue is in process (no --redis-url)")
        if self.output_store == "memory":
            parts.append("outputs are kept in memory (--output-store memory)")
        return parts

    @property
    def max_body_bytes(self) -> int:
        """A JSON body may carry a base64 data: URI of ``fetch.max_bytes`` plus the other fields."""
        return self.fetch.max_bytes * 4 // 3 + 64 * 1024
