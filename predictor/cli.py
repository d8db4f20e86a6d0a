"""``chrono-upscaler``: serve the fal API, or upscale a file in process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from predictor.auth import load_keys
from predictor.config import FetchLimits, LoraSettings, MiB, Settings
from predictor.engines import ENGINE_NAMES

_DEFAULT_FETCH = FetchLimits()  # defaults live once, in predictor.config
_DEFAULT_LORAS = LoraSettings()
FORMAT_BY_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINE_NAMES, default="sr", help="upscaling engine")
    group.add_argument(
        "--sr-model",
        choices=("waifu2x", "realesrgan"),
        default=None,
        help="sr engine: waifu2x photo (fidelity, default) or Real-ESRGAN x4plus (clean-up look)",
    )
    group.add_argument("--tile-size", type=int, default=None, help="sr engine: input tile side")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _add_chronoedit_options(parser)


def _add_chronoedit_options(parser: argparse.ArgumentParser) -> None:
    from predictor.engines.blend import DEFAULT_MAX_PASS_AREA

    group = parser.add_argument_group("chronoedit engine (docs/chronoedit.md)")
    group.add_argument(
        "--model-dir",
        default=None,
        help="ChronoEdit-14B-Diffusers weights: a directory or a repo id in the local Hugging "
        "Face cache (default /mnt/models, where KServe puts storageUri)",
    )
    group.add_argument(
        "--upscaler-lora",
        default=None,
        help="upsample_lora_diffusers.safetensors, or a directory/cached repo holding it "
        "(default: found next to --model-dir or in the HF cache)",
    )
    group.add_argument(
        "--distill-lora",
        default=None,
        help="fuse NVIDIA's 8-step distillation LoRA (then flow_shift 2 instead of 5)",
    )
    group.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    group.add_argument(
        "--max-pass-area",
        type=int,
        default=DEFAULT_MAX_PASS_AREA,
        help="output pixels per diffusion pass; larger outputs are rendered as blended tiles",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer (static shapes) and warm it up at load",
    )
    group.add_argument(
        "--safety-checker-dir",
        default=None,
        help="StableDiffusionSafetyChecker + CLIPImageProcessor directory (default: no checker)",
    )
    _add_lora_options(parser)


def _add_lora_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("request LoRAs, chronoedit engine (docs/loras.md)")
    group.add_argument(
        "--lora-dir",
        default=None,
        help="directory of .safetensors LoRAs a request may name by path (inside it only)",
    )
    group.add_argument(
        "--lora-catalog",
        default=None,
        help="JSON or YAML file of name → URI (hf://owner/repo/file.safetensors, https://…, "
        "or a path) that requests may name",
    )
    group.add_argument(
        "--lora-cache-dir",
        default=None,
        help="where downloaded LoRAs are kept, by content hash "
        "(default ~/.cache/chrono-upscaler/loras)",
    )
    group.add_argument(
        "--lora-cache-mb",
        type=float,
        default=_DEFAULT_LORAS.cache_bytes / MiB,
        help="host memory for recently used LoRAs, ready to swap in",
    )
    group.add_argument(
        "--max-lora-mb",
        type=float,
        default=_DEFAULT_LORAS.max_bytes / MiB,
        help="largest LoRA file accepted",
    )
    group.add_argument(
        "--lora-max-rank",
        type=int,
        default=_DEFAULT_LORAS.max_rank,
        help="rank of the LoRA slots; a request LoRA of higher rank is refused",
    )
    group.add_argument(
        "--lora-slots",
        type=int,
        choices=range(4),
        default=_DEFAULT_LORAS.slots,
        help="extra LoRAs per request (each slot costs compute on every step; 0: none)",
    )
    group.add_argument(
        "--allow-lora-urls",
        action="store_true",
        help="let requests name http(s) LoRA URLs (catalog URLs are always allowed)",
    )
    group.add_argument(
        "--lora-fetch-timeout",
        type=float,
        default=_DEFAULT_LORAS.fetch_timeout_s,
        help="seconds to download one LoRA",
    )


def _lora_settings(args: argparse.Namespace) -> LoraSettings:
    for flag, value in (
        ("--max-lora-mb", args.max_lora_mb),
        ("--lora-max-rank", args.lora_max_rank),
        ("--lora-fetch-timeout", args.lora_fetch_timeout),
    ):
        if value <= 0:
            raise SystemExit(f"chrono-upscaler: error: {flag} must be positive, got {value:g}")
    if args.lora_cache_mb < 0:  # 0 keeps nothing in memory
        raise SystemExit(
            f"chrono-upscaler: error: --lora-cache-mb must be ≥ 0, got {args.lora_cache_mb:g}"
        )
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


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.engine == "chronoedit":
        options = {
            "model_dir": args.model_dir,
            "upscaler_lora": args.upscaler_lora,
            "distill_lora": args.distill_lora,
            "dtype": args.dtype,
            "device": args.device,
            "max_pass_area": args.max_pass_area,
            "compile": args.compile or None,
            "safety_checker_dir": args.safety_checker_dir,
            "threads": args.threads,
        }
        loras = _lora_settings(args)
        if loras != _DEFAULT_LORAS:
            options["loras"] = loras
    else:
        options = {"model": args.sr_model, "tile_size": args.tile_size, "threads": args.threads}
    return {key: value for key, value in options.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chrono-upscaler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the fal-compatible API on KServe",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default=Settings.host, help="address to bind (0.0.0.0 in a pod)")
    serve.add_argument(
        "--port", type=int, default=Settings.port, help="HTTP port (KServe's is 8080)"
    )
    serve.add_argument("--model-name", default=Settings.model_name, help="KServe model name")
    _add_engine_options(serve)
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

    upscale = commands.add_parser("upscale", help="upscale one image file in this process")
    upscale.add_argument("input", type=Path)
    upscale.add_argument("-o", "--output", type=Path, required=True)
    upscale.add_argument("--factor", type=float, default=2.0, help="1 to 4")
    upscale.add_argument(
        "--format",
        choices=("jpeg", "png", "webp"),
        default=None,
        help="default: from the output file's extension, else jpeg",
    )
    upscale.add_argument("--seed", type=int, default=None)
    upscale.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="an extra LoRA (chronoedit; up to 3): a catalog name, a file in --lora-dir, "
        "hf://… or a URL, with an optional :scale (default 1)",
    )
    _add_engine_options(upscale)

    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a tiny random ChronoEdit model (real classes) for tests and GPU-less trials",
    )
    tiny.add_argument("directory", type=Path, help="where to write it (a --model-dir)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--with-safety-checker",
        action="store_true",
        help="also write a tiny random safety checker into DIR/safety_checker",
    )
    tiny.add_argument(
        "--flag-everything",
        action="store_true",
        help="make that safety checker flag every image (tests of the flagged path)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        engine=args.engine,
        engine_options=_engine_options(args),
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


def _lora_item(text: str) -> dict[str, Any]:
    """``PATH[:SCALE]`` → a request's ``{path, scale}`` (a URL's own colons stay in the path)."""
    path, sep, tail = text.rpartition(":")
    try:
        return {"path": path, "scale": float(tail)} if sep and path else {"path": text}
    except ValueError:
        return {"path": text}


def run_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from predictor.engines import load_engine
    from predictor.errors import UpscaleError
    from predictor.journey import parse_request, process_image
    from predictor.plan import resolve_seed

    output_format = args.format or FORMAT_BY_SUFFIX.get(args.output.suffix.lower(), "jpeg")
    try:
        request = parse_request(
            {
                "image_url": str(args.input),
                "upscale_factor": args.factor,
                "output_format": output_format,
                "seed": args.seed,
                "loras": [_lora_item(item) for item in args.lora],
            },
            loc_prefix=(),
        )
        data = args.input.read_bytes()
        engine = load_engine(args.engine, **_engine_options(args))
        with tqdm(unit="tile", desc=f"{args.engine} ×{args.factor:g}") as bar:

            def progress(done: int, total: int, unit: str) -> None:
                bar.total, bar.unit = total, unit
                bar.n = done
                bar.refresh()

            processed = process_image(
                data, request, resolve_seed(request.seed), engine, Settings(), progress
            )
    except UpscaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.write_bytes(processed.encoded.data)
    (width, height), encoded = processed.input_size, processed.encoded
    print(f"{args.input} {width}×{height} → {args.output} {encoded.width}×{encoded.height}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        from predictor.server import serve

        serve(settings_from_args(args))
        return 0
    if args.command == "make-tiny-model":
        from predictor.tiny_model import run

        return run(args)
    return run_upscale(args)


if __name__ == "__main__":
    sys.exit(main())
