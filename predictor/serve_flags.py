"""The ``serve`` command's flags, and the :class:`Settings` they become (checked, with errors
that name the flag)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from predictor.auth import load_keys
from predictor.config import FetchLimits, MiB, Settings
from predictor.engine_flags import add_engine_options, engine_options

_DEFAULT_FETCH = FetchLimits()  # defaults live once, in predictor.config


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default=Settings.host, help="address to bind (0.0.0.0 in a pod)")
    serve.add_argument(
        "--port", type=int, default=Settings.port, help="HTTP port (KServe's is 8080)"
    )
    serve.add_argument("--model-name", default=Settings.model_name, help="KServe model name")
    add_engine_options(serve)
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let image_url reach loopback/private addresses (tests, trusted networks only)",
    )
    limits.add_argument(
        "--max-download-mb",
        type=float,
        default=_DEFAULT_FETCH.max_bytes / MiB,
        help="image_url size limit",
    )
    limits.add_argument(
        "--fetch-timeout",
        type=float,
        default=_DEFAULT_FETCH.total_timeout_s,
        help="seconds to download image_url",
    )
    limits.add_argument("--max-input-pixels", type=int, default=Settings.max_input_pixels)
    limits.add_argument("--max-output-pixels", type=int, default=Settings.max_output_pixels)
    limits.add_argument(
        "--max-inflight", type=int, default=Settings.max_inflight, help="engine jobs run at once"
    )
    limits.add_argument(
        "--max-waiting",
        type=int,
        default=Settings.max_waiting,
        help="requests that may wait; then 429",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=Settings.request_timeout_s,
        help="seconds per request; then 504",
    )
    outputs = serve.add_argument_group("outputs")
    outputs.add_argument(
        "--output-ttl", type=float, default=Settings.output_ttl_s, help="seconds outputs are kept"
    )
    outputs.add_argument(
        "--output-store-mb",
        type=float,
        default=Settings.output_store_bytes / MiB,
        help="output store size",
    )
    outputs.add_argument("--public-url", default=None, help="base URL for output links")
    outputs.add_argument(
        "--default-num-inference-steps",
        type=int,
        default=None,
        help="num_inference_steps for requests that leave it out (fal's default: 30)",
    )
    outputs.add_argument(
        "--default-output-format",
        choices=("jpeg", "png", "webp"),
        default=None,
        help="output_format for requests that leave it out (fal's default: jpeg)",
    )
    queue = serve.add_argument_group("queue and webhooks")
    queue.add_argument(
        "--queue-result-ttl",
        type=float,
        default=Settings.queue_result_ttl_s,
        help="seconds a queued request's result is kept after it finishes; then 404",
    )
    queue.add_argument(
        "--webhook-secret",
        default=os.environ.get("UPSCALER_WEBHOOK_SECRET"),
        help="HMAC-SHA256 key that signs webhook deliveries (env UPSCALER_WEBHOOK_SECRET)",
    )
    queue.add_argument(
        "--webhook-attempts", type=int, default=Settings.webhook_attempts, help="tries per webhook"
    )
    queue.add_argument(
        "--webhook-backoff",
        type=float,
        default=Settings.webhook_backoff_s,
        help="seconds before the first webhook retry (doubling after each)",
    )
    shared = serve.add_argument_group("many replicas (shared queue and outputs)")
    shared.add_argument(
        "--redis-url",
        default=os.environ.get("UPSCALER_REDIS_URL"),
        help="share the queue between replicas through this Redis, e.g. redis://redis:6379/0 "
        "(env UPSCALER_REDIS_URL); default: in process",
    )
    shared.add_argument(
        "--redis-prefix",
        default=Settings.redis_prefix,
        help="key prefix: one per deployment sharing a Redis",
    )
    shared.add_argument(
        "--max-queued",
        type=int,
        default=Settings.max_queued,
        help="requests waiting in the shared queue before submits get 429",
    )
    shared.add_argument(
        "--queue-lease",
        type=float,
        default=Settings.queue_lease_s,
        help="seconds without renewal before a dead replica's request is run elsewhere",
    )
    shared.add_argument(
        "--queue-max-attempts",
        type=int,
        default=Settings.queue_max_attempts,
        help="runs of one request (replicas dying under it) before it fails",
    )
    shared.add_argument(
        "--output-store",
        default=Settings.output_store,
        help="where sync_mode=false outputs live: memory, redis (with --redis-url) or "
        "s3://bucket/prefix",
    )
    shared.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (MinIO, Ceph, R2); env AWS_ENDPOINT_URL",
    )
    shared.add_argument(
        "--s3-public-url",
        default=None,
        help="public base URL of the bucket (else outputs get presigned URLs)",
    )
    security = serve.add_argument_group("security")
    security.add_argument(
        "--keys-file",
        type=Path,
        default=None,
        help="API keys, one per line; with keys (here or in env UPSCALER_API_KEYS, "
        "comma-separated) inference routes need 'Authorization: Key <key>'",
    )
    security.add_argument("--tls-cert", default=None, help="serve HTTPS: certificate chain (PEM)")
    security.add_argument("--tls-key", default=None, help="serve HTTPS: private key (PEM)")
    observe = serve.add_argument_group("metrics")
    observe.add_argument(
        "--gpu-hourly-usd",
        type=float,
        default=float(os.environ.get("UPSCALER_GPU_HOURLY_USD", Settings.gpu_hourly_usd)),
        help="hourly price of the engine's device, for upscaler_cost_usd_total "
        "(env UPSCALER_GPU_HOURLY_USD)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        engine=args.engine,
        engine_options=engine_options(args),
        fetch=FetchLimits(
            allow_private_urls=args.allow_private_urls,
            max_bytes=int(args.max_download_mb * MiB),
            total_timeout_s=args.fetch_timeout,
        ),
        max_input_pixels=args.max_input_pixels,
        max_output_pixels=args.max_output_pixels,
        max_inflight=args.max_inflight,
        max_waiting=args.max_waiting,
        request_timeout_s=args.request_timeout,
        output_ttl_s=args.output_ttl,
        output_store_bytes=int(args.output_store_mb * MiB),
        public_url=args.public_url,
        gpu_hourly_usd=_non_negative(args.gpu_hourly_usd, "--gpu-hourly-usd"),
        request_defaults=_request_defaults(args),
        queue_result_ttl_s=_non_negative(args.queue_result_ttl, "--queue-result-ttl"),
        webhook_secret=args.webhook_secret or None,
        webhook_attempts=max(1, args.webhook_attempts),
        webhook_backoff_s=_non_negative(args.webhook_backoff, "--webhook-backoff"),
        api_keys=load_keys(args.keys_file),
        redis_url=args.redis_url or None,
        redis_prefix=args.redis_prefix,
        max_queued=max(1, args.max_queued),
        queue_lease_s=max(1.0, args.queue_lease),
        queue_max_attempts=max(1, args.queue_max_attempts),
        output_store=_output_store(args),
        s3_endpoint_url=args.s3_endpoint_url or None,
        s3_public_url=args.s3_public_url,
        tls_cert=args.tls_cert,
        tls_key=_tls_key(args),
    )


def _output_store(args: argparse.Namespace) -> str:
    store = args.output_store
    if store not in ("memory", "redis") and not store.startswith("s3://"):
        raise SystemExit(
            f"chrono-upscaler serve: error: --output-store {store!r}: "
            "expected memory, redis or s3://bucket/prefix"
        )
    if store == "redis" and not args.redis_url:
        raise SystemExit("chrono-upscaler serve: error: --output-store redis needs --redis-url")
    return store


def _tls_key(args: argparse.Namespace) -> str | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("chrono-upscaler serve: error: --tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise SystemExit(f"chrono-upscaler serve: error: {flag} {path}: no such file")
    return args.tls_key


def _non_negative(value: float, flag: str) -> float:
    if value < 0:
        raise SystemExit(f"chrono-upscaler serve: error: {flag} must be ≥ 0, got {value:g}")
    return value


def _request_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--default-*`` flags, checked against the request schema's own ranges."""
    from pydantic import ValidationError

    from predictor.schema import UpscaleRequest

    defaults = {
        "num_inference_steps": args.default_num_inference_steps,
        "output_format": args.default_output_format,
    }
    defaults = {name: value for name, value in defaults.items() if value is not None}
    try:
        checked = UpscaleRequest.model_validate({"image_url": "data:,", **defaults})
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--default-" + str(error["loc"][0]).replace("_", "-")
        raise SystemExit(f"chrono-upscaler serve: error: {flag}: {error['msg']}") from None
    return {name: getattr(checked, name) for name in defaults}  # typed as the schema types them
