"""The engine flags shared by ``serve`` and ``upscale``, and the engine options they become."""

from __future__ import annotations

import argparse
from typing import Any

from predictor.config import LoraSettings, MiB
from predictor.engines import ENGINE_NAMES

_DEFAULT_LORAS = LoraSettings()


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINE_NAMES, default="sr", help="upscaling engine")
    group.add_argument(
        "--sr-model",
        choices=("waifu2x", "realesrgan"),
        default=None,
        help="sr engine: waifu2x photo (fidelity, default) or Real-ESRGAN x4plus (clean-up look)",
    )
    group.add_argument("--tile-size", type=int, default=None, help="sr engine: input tile side")
    group.add_argument(
        "--sr-precision",
        choices=("auto", "bf16", "fp32"),
        default=None,
        help="sr engine arithmetic; auto: bf16 where the CPU has it natively (AMX, AVX512_BF16)",
    )
    group.add_argument(
        "--sr-backend",
        choices=("auto", "torch", "ncnn"),
        default=None,
        help="sr engine runtime; auto: the fastest measured for the model on this CPU",
    )
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


def lora_settings(args: argparse.Namespace) -> LoraSettings:
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


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
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
        loras = lora_settings(args)
        if loras != _DEFAULT_LORAS:
            options["loras"] = loras
    else:
        options = {"model": args.sr_model, "tile_size": args.tile_size, "threads": args.threads}
        options |= {"precision": args.sr_precision, "backend": args.sr_backend}
    return {key: value for key, value in options.items() if value is not None}
