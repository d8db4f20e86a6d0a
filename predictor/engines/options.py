"""Each engine's options: one frozen dataclass per engine holds its defaults, once.

The command line's engine flags are built from these fields (:mod:`predictor.flags`), and
:func:`predictor.engines.load_engine` builds the engine from them. They import nothing heavy, so
listing flags never loads torch. Problems are reported by option name (``tile_size``), never by
flag: the same options come from the CLI, the operator's arguments or a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from predictor.engines.blend import DEFAULT_MAX_PASS_AREA
from predictor.engines.cpu_paths import BACKENDS, PRECISIONS

MiB = 1024 * 1024
#: extra LoRAs a request may ask for: the chronoedit engine has this many slots at most
MAX_LORAS = 3

SRModel = Literal["waifu2x", "realesrgan"]
SR_MODELS: tuple[SRModel, ...] = ("waifu2x", "realesrgan")
#: where KServe's storage initializer puts ``storageUri`` in a predictor pod
DEFAULT_MODEL_DIR = "/mnt/models"
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cuda", "cpu")
#: the chronoedit transformer's linear layers: bf16 (or --dtype), or float8 e4m3 per-row scaled
GPU_PRECISIONS = ("bf16", "fp8")


@dataclass(frozen=True)
class LoraSettings:
    """Request LoRAs on the chronoedit engine: see ``predictor.loras`` and docs/loras.md."""

    #: files a request may name by path (relative to it, or absolute inside it)
    lora_dir: str | None = None
    #: a JSON or YAML file of name → URI (hf://, http(s)://, or a path)
    catalog: str | None = None
    #: downloaded LoRAs, stored by content hash (default: ~/.cache/chrono-upscaler/loras)
    cache_dir: str | None = None
    #: host memory for recently used LoRAs (converted, ready to copy into a slot)
    cache_bytes: int = 2048 * MiB
    #: the largest LoRA file accepted (files, downloads and the Hub alike)
    max_bytes: int = 2048 * MiB
    #: the slots' rank: a LoRA of higher rank is refused
    max_rank: int = 64
    #: extra adapters beside the upscaler (0 turns request LoRAs off)
    slots: int = MAX_LORAS
    #: let requests name http(s) URLs (catalog URLs are always allowed)
    allow_urls: bool = False
    #: let LoRA URLs reach loopback/private addresses (the image fetcher's flag)
    allow_private_urls: bool = False
    #: seconds to download one LoRA over http(s)
    fetch_timeout_s: float = 600.0


class OptionError(ValueError):
    """An engine option out of range; the message names the option."""


def _at_least(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise OptionError(f"{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class SROptions:
    """The ``sr`` engine: learned super-resolution on the CPU (docs/sr.md)."""

    engine: ClassVar[str] = "sr"

    #: waifu2x photo (fidelity) or Real-ESRGAN x4plus (a clean-up look)
    model: SRModel = "waifu2x"
    #: input pixels per tile side (None: the model's own default)
    tile_size: int | None = None
    #: torch CPU threads (None: torch's default, capped by the CPU affinity and cgroup quota)
    threads: int | None = None
    #: arithmetic: auto (bf16 where the CPU has it natively), bf16 or fp32 (docs/benchmarks.md)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    #: runtime: auto (the fastest measured for the model on this CPU), torch or ncnn
    backend: Literal["auto", "torch", "ncnn"] = "auto"

    def __post_init__(self) -> None:
        if self.model not in SR_MODELS:
            raise OptionError(f"model must be one of {', '.join(SR_MODELS)}, got {self.model!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.backend not in BACKENDS:
            raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        _at_least("tile_size", self.tile_size, 1)
        _at_least("threads", self.threads, 1)


@dataclass(frozen=True)
class ChronoEditOptions:
    """The ``chronoedit`` engine: ChronoEdit-14B and NVIDIA's Upscaler LoRA (docs/chronoedit.md)."""

    engine: ClassVar[str] = "chronoedit"

    #: ChronoEdit-14B-Diffusers weights: a directory or a repo id in the local HF cache
    model_dir: str = DEFAULT_MODEL_DIR
    #: upsample_lora_diffusers.safetensors, or a directory holding it (None: beside the model)
    upscaler_lora: str | None = None
    #: NVIDIA's 8-step distillation LoRA, fused at load (then flow_shift 2 instead of 5)
    distill_lora: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    max_pass_area: int = DEFAULT_MAX_PASS_AREA
    #: torch.compile the transformer (static shapes) and warm it up at load; None: on CUDA only
    compile: bool | None = None
    #: the transformer's linear layers: bf16 (--dtype), or fp8 (float8 e4m3, per-row scales)
    precision: Literal["bf16", "fp8"] = "bf16"
    #: StableDiffusionSafetyChecker + CLIPImageProcessor directory (None: no checker)
    safety_checker_dir: str | None = None
    threads: int | None = None
    #: request LoRAs: sources, limits and slots (docs/loras.md)
    loras: LoraSettings = field(default_factory=LoraSettings)
    #: prompt-embedding and compile caches (None: $CHRONO_UPSCALER_CACHE_DIR or ~/.cache/…)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in GPU_PRECISIONS:
            raise OptionError(
                f"precision must be one of {', '.join(GPU_PRECISIONS)}, got {self.precision!r}"
            )
        _at_least("max_pass_area", self.max_pass_area, 32 * 32)
        _at_least("threads", self.threads, 1)
        check_lora_settings(self.loras)


def check_lora_settings(loras: LoraSettings) -> None:
    if not 0 <= loras.slots <= MAX_LORAS:
        raise OptionError(f"loras.slots must be 0 to {MAX_LORAS}, got {loras.slots}")
    _at_least("loras.max_rank", loras.max_rank, 1)
    _at_least("loras.max_bytes", loras.max_bytes, 1)
    _at_least("loras.cache_bytes", loras.cache_bytes, 0)
    if loras.fetch_timeout_s <= 0:
        raise OptionError(f"loras.fetch_timeout_s must be positive, got {loras.fetch_timeout_s:g}")


EngineOptions = SROptions | ChronoEditOptions
#: engine name → its options class; ``--engine`` and :func:`load_engine` accept these names
OPTIONS_BY_ENGINE: dict[str, type[SROptions] | type[ChronoEditOptions]] = {
    options.engine: options for options in (SROptions, ChronoEditOptions)
}
