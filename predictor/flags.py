"""The command line's flags: ``serve``'s, which become :class:`Settings`, and the engine flags
shared by ``serve`` and ``upscale``, built from the engines' typed options. Checked here, with
errors that name the flag."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from predictor.api.auth import load_keys
from predictor.config import FetchLimits, Settings
from predictor.engines import ENGINE_NAMES, options_for
from predictor.engines.cpu_paths import BACKENDS, PRECISIONS
from predictor.engines.options import (
    DEVICES,
    DTYPES,
    GPU_PRECISIONS,
    MAX_LORAS,
    SR_MODELS,
    ChronoEditOptions,
    EngineOptions,
    LoraSettings,
    MiB,
    OptionError,
    SROptions,
)

_DEFAULT_FETCH = FetchLimits()  # defaults live once, in predictor.config


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it says something: not for an unset (None) or off (False)
    default, and not where the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text or "default:" in text:
            return text
        return super()._get_help_string(action)


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
        "--enable-model-control",
        action="store_true",
        help="serve KServe's model load/unload and :explain routes (behind the key when keys "
        "are set); off by default, since unloading takes the model offline",
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
    limits.add_argument(
        "--max-input-pixels",
        type=int,
        default=Settings.max_input_pixels,
        help="decoded input pixels (width × height) accepted; larger images get 413",
    )
    limits.add_argument(
        "--max-output-pixels",
        type=int,
        default=Settings.max_output_pixels,
        help="planned output pixels (width × height); larger requests get 413 before any work",
    )
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
    limits.add_argument(
        "--shutdown-grace",
        type=float,
        default=Settings.shutdown_grace_s,
        help="seconds running work gets after SIGTERM (admission stops at once) before it is "
        "stopped with a 503; keep it below the pod's terminationGracePeriodSeconds",
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
        default=None,
        help="where sync_mode=false outputs live: memory, redis (with --redis-url) or "
        "s3://bucket/prefix (default: redis with --redis-url, else memory)",
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
        shutdown_grace_s=_non_negative(args.shutdown_grace, "--shutdown-grace"),
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
        enable_model_control=args.enable_model_control,
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
    store = args.output_store or ("redis" if args.redis_url else Settings.output_store)
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


_SR = SROptions()
_CHRONOEDIT = ChronoEditOptions()
_LORAS = LoraSettings()


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The engine flags; each default is its option's (predictor.engines.options)."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine", choices=ENGINE_NAMES, default=SROptions.engine, help="upscaling engine"
    )
    group.add_argument(
        "--sr-model",
        choices=SR_MODELS,
        default=_SR.model,
        help="sr engine: waifu2x photo (fidelity) or Real-ESRGAN x4plus (clean-up look)",
    )
    group.add_argument(
        "--tile-size",
        type=int,
        default=_SR.tile_size,
        help="sr engine: input tile side (default: the model's own)",
    )
    group.add_argument(
        "--sr-precision",
        choices=PRECISIONS,
        default=_SR.precision,
        help="sr engine arithmetic; auto: bf16 where the CPU has it natively (AMX, AVX512_BF16)",
    )
    group.add_argument(
        "--sr-backend",
        choices=BACKENDS,
        default=_SR.backend,
        help="sr engine runtime; auto: the fastest measured for the model on this CPU",
    )
    group.add_argument(
        "--threads",
        type=int,
        default=_SR.threads,
        help="torch CPU threads (default: torch's, capped by the CPU affinity and cgroup quota)",
    )
    _add_chronoedit_options(parser)


def _add_chronoedit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chronoedit engine (docs/chronoedit.md)")
    group.add_argument(
        "--model-dir",
        default=_CHRONOEDIT.model_dir,
        help="ChronoEdit-14B-Diffusers weights: a directory or a repo id in the local Hugging "
        "Face cache (KServe puts storageUri in /mnt/models)",
    )
    group.add_argument(
        "--upscaler-lora",
        default=_CHRONOEDIT.upscaler_lora,
        help="upsample_lora_diffusers.safetensors, or a directory/cached repo holding it "
        "(default: found next to --model-dir or in the HF cache)",
    )
    group.add_argument(
        "--distill-lora",
        default=_CHRONOEDIT.distill_lora,
        help="fuse NVIDIA's 8-step distillation LoRA (then flow_shift 2 instead of 5)",
    )
    group.add_argument(
        "--dtype",
        choices=DTYPES,
        default=_CHRONOEDIT.dtype,
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    group.add_argument(
        "--device",
        choices=DEVICES,
        default=_CHRONOEDIT.device,
        help="where the pipeline runs; auto: CUDA when a GPU is visible, else the CPU",
    )
    group.add_argument(
        "--max-pass-area",
        type=int,
        default=_CHRONOEDIT.max_pass_area,
        help="output pixels per diffusion pass; larger outputs are rendered as blended tiles",
    )
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=_CHRONOEDIT.compile,
        help="torch.compile the transformer (static shapes) and warm up its graph variants at "
        "load (default: on when the device is CUDA, off on the CPU)",
    )
    group.add_argument(
        "--precision",
        choices=GPU_PRECISIONS,
        default=_CHRONOEDIT.precision,
        help="the transformer's linear layers: bf16, or fp8 (float8 e4m3, per-row scales; "
        "a GPU with compute capability 8.9+)",
    )
    group.add_argument(
        "--safety-checker-dir",
        default=_CHRONOEDIT.safety_checker_dir,
        help="StableDiffusionSafetyChecker + CLIPImageProcessor directory (default: no checker)",
    )
    group.add_argument(
        "--cache-dir",
        default=_CHRONOEDIT.cache_dir,
        help="start-up caches: the prompt's embeddings (when --model-dir is read-only) and "
        "torch.compile's artifacts (default: $CHRONO_UPSCALER_CACHE_DIR, else "
        "~/.cache/chrono-upscaler)",
    )
    _add_lora_options(parser)


def _add_lora_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("request LoRAs, chronoedit engine (docs/loras.md)")
    group.add_argument(
        "--lora-dir",
        default=_LORAS.lora_dir,
        help="directory of .safetensors LoRAs a request may name by path (inside it only)",
    )
    group.add_argument(
        "--lora-catalog",
        default=_LORAS.catalog,
        help="JSON or YAML file of name → URI (hf://owner/repo/file.safetensors, https://…, "
        "or a path) that requests may name",
    )
    group.add_argument(
        "--lora-cache-dir",
        default=_LORAS.cache_dir,
        help="where downloaded LoRAs are kept, by content hash "
        "(default ~/.cache/chrono-upscaler/loras)",
    )
    group.add_argument(
        "--lora-cache-mb",
        type=float,
        default=_LORAS.cache_bytes / MiB,
        help="host memory for recently used LoRAs, ready to swap in",
    )
    group.add_argument(
        "--max-lora-mb",
        type=float,
        default=_LORAS.max_bytes / MiB,
        help="largest LoRA file accepted",
    )
    group.add_argument(
        "--lora-max-rank",
        type=int,
        default=_LORAS.max_rank,
        help="largest rank of a request LoRA (higher is refused); the first rank bucket",
    )
    group.add_argument(
        "--lora-slots",
        type=int,
        choices=range(MAX_LORAS + 1),
        default=_LORAS.slots,
        help="extra LoRAs per request (0: none); sets the stacked pair's capacity",
    )
    group.add_argument(
        "--allow-lora-urls",
        action="store_true",
        default=_LORAS.allow_urls,
        help="let requests name http(s) LoRA URLs (catalog URLs are always allowed)",
    )
    group.add_argument(
        "--lora-fetch-timeout",
        type=float,
        default=_LORAS.fetch_timeout_s,
        help="seconds to download one LoRA",
    )


#: option name (as OptionError names it) → the flag that sets it
_FLAG_OF_OPTION = {
    "model": "--sr-model",
    "precision": "--sr-precision",
    "backend": "--sr-backend",
    "loras.max_rank": "--lora-max-rank",
    "loras.max_bytes": "--max-lora-mb",
    "loras.cache_bytes": "--lora-cache-mb",
    "loras.fetch_timeout_s": "--lora-fetch-timeout",
    "loras.slots": "--lora-slots",
}


def lora_settings(args: argparse.Namespace) -> LoraSettings:
    return LoraSettings(
        lora_dir=args.lora_dir,
        catalog=args.lora_catalog,
        cache_dir=args.lora_cache_dir,
        cache_bytes=int(args.lora_cache_mb * MiB),
        max_bytes=int(args.max_lora_mb * MiB),
        max_rank=args.lora_max_rank,
        slots=args.lora_slots,
        allow_urls=args.allow_lora_urls,
        allow_private_urls=getattr(args, "allow_private_urls", False),
        fetch_timeout_s=args.lora_fetch_timeout,
    )


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The typed options of ``--engine``; an option out of range exits naming its flag."""
    try:
        if args.engine == ChronoEditOptions.engine:
            return options_for(
                args.engine,
                model_dir=args.model_dir,
                upscaler_lora=args.upscaler_lora,
                distill_lora=args.distill_lora,
                dtype=args.dtype,
                device=args.device,
                max_pass_area=args.max_pass_area,
                compile=args.compile,
                precision=args.precision,
                safety_checker_dir=args.safety_checker_dir,
                threads=args.threads,
                loras=lora_settings(args),
                cache_dir=args.cache_dir,
            )
        return options_for(
            args.engine,
            model=args.sr_model,
            tile_size=args.tile_size,
            threads=args.threads,
            precision=args.sr_precision,
            backend=args.sr_backend,
        )
    except OptionError as exc:
        option = str(exc).split(" ", 1)[0]
        flags = _FLAG_OF_OPTION
        if args.engine == ChronoEditOptions.engine:  # its precision is --precision
            flags = {**flags, "precision": "--precision"}
        flag = flags.get(option, "--" + option.replace("_", "-"))
        raise SystemExit(f"chrono-upscaler: error: {flag}: {exc}") from None
