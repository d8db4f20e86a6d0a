"""``make bench-gpu``: the real ``ChronoEditEngine`` at full size, with random weights.

Every pipeline part is built from the real configurations — the Wan2.1-I2V-14B transformer,
the Wan VAE, UMT5-XXL, CLIP ViT-H/14 — with random weights directly on the GPU (no download),
a random rank-32 Upscaler LoRA and rank-16 request LoRAs are written to a temporary directory,
and requests go through ``ChronoEditEngine.upscale``: the path a request takes. Stages:

1. the bare transformer per step, eager (today's table), next to the FLOP floor;
2. the engine, eager, bf16; 3. compiled, bf16; 4. compiled, fp8 (float8 e4m3, per-row scales);

each row a request: 1280×720 (the default request; also ``lora_scale`` ≠ 1, 1 and 3 extra
LoRAs), 2048×1152 (one full pass) and 2560×1440 (tiled). A row warms up once (its first call
compiles its graph variant), then runs ``--measure-steps`` steps; the per-step time is the median
of the synchronised gaps between steps, and the 30-step per-image time is the measured time
outside the steps plus 30 × steps × tiles (the default request is also run for all 30 steps
where the budget allows). fp8 drift: the default request with the same seed in bf16 and fp8
(relative error of the final latent, PSNR of the output).

Robust by design (the run is a one-off on a borrowed GPU): every stage and row is guarded (a
traceback is printed, the row says FAILED, the rest still runs), output is flushed as it goes,
``--budget-s`` skips what no longer fits (and says so), and with ``$OUT`` set the results are
also written there as ``bench_gpu.md`` and ``bench_gpu.json``. Without CUDA (or with ``--tiny``)
the same harness runs on the tiny configuration on the CPU and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: diffusers' config for Wan2.1-I2V-14B (the ChronoEdit-14B transformer)
WAN_I2V_14B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
}
#: a shrunk config with the same structure, to exercise the harness anywhere
TINY: dict[str, Any] = {
    **WAN_I2V_14B,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 16,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "image_dim": 16,
    "added_kv_proj_dim": 24,
}
#: UMT5-XXL, the text encoder (google/umt5-xxl's encoder)
UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
#: CLIP ViT-H/14, the image encoder (Wan2.1-I2V's open-clip vision tower)
CLIP_VIT_H14: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
TEXT_TOKENS = 512  # max_sequence_length (WanAttnProcessor assumes it)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224²: 16² patches + the class token
LATENT_FRAMES = 2  # 5 frames, VAE time stride 4
VAE_STRIDE = 8
RESOLUTIONS = ((832, 480), (1280, 720))
DEFAULT_RESOLUTIONS = [f"{w}x{h}" for w, h in RESOLUTIONS]
#: the floor table: the bare table's sizes and the engine rows' passes
FLOOR_SIZES = (*RESOLUTIONS, (2048, 1152))
PEAK_TFLOPS = 800.0  # a dense bf16 peak for H100/H200-class GPUs (docs/chronoedit.md)
FAL_PRICE = 0.03  # fal's price of a 720p image
STEPS = 30  # a default request's steps
#: the LoRAs' rank: the Upscaler LoRA is rank 32; request LoRAs rank 16 (tiny: 4 and 4)
UPSCALER_RANK, EXTRA_RANK = 32, 16
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS = (
    *(f"attn{index}.{name}" for index in (1, 2) for name in _ATTENTION),
    "ffn.net.0.proj",
    "ffn.net.2",
)


@dataclass(frozen=True)
class StepShape:
    """The transformer input of one denoising step at an output size."""

    width: int
    height: int

    @property
    def latent(self) -> tuple[int, int, int]:
        return LATENT_FRAMES, self.height // VAE_STRIDE, self.width // VAE_STRIDE

    def tokens(self, config: dict[str, Any]) -> int:
        p_t, p_h, p_w = config["patch_size"]
        frames, height, width = self.latent
        return (frames // p_t) * (height // p_h) * (width // p_w)


def step_flop_parts(shape: StepShape, config: dict[str, Any] = WAN_I2V_14B) -> dict[str, float]:
    """Multiply-adds × 2 of one transformer forward, split into ``matmul`` (the linear layers)
    and ``attention`` (scores and weighted sums); norms, RoPE and element-wise work are left
    out, they are far below 1%."""
    tokens = shape.tokens(config)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    context = TEXT_TOKENS + IMAGE_TOKENS
    linear = (
        2 * tokens * dim * dim * 4  # self-attention q, k, v, out
        + 2 * tokens * dim * dim * 2  # cross-attention q, out
        + 2 * context * dim * dim * 2  # cross-attention k, v (text) and added k, v (image)
        + 2 * tokens * dim * config["ffn_dim"] * 2  # feed-forward up and down
    )
    attention = (
        2 * tokens * tokens * dim * 2  # self-attention scores and weighted sum
        + 2 * tokens * context * dim * 2  # cross-attention over text and image tokens
    )
    patch = (
        2 * tokens * dim * config["in_channels"] * 4 + 2 * tokens * dim * config["out_channels"] * 4
    )
    text = 2 * TEXT_TOKENS * (config["text_dim"] * dim + dim * dim)
    image = 2 * IMAGE_TOKENS * (config["image_dim"] ** 2 + config["image_dim"] * dim)
    layers = config["num_layers"]
    return {"matmul": layers * linear + patch + text + image, "attention": layers * attention}


def step_flops(shape: StepShape, config: dict[str, Any] = WAN_I2V_14B) -> float:
    """Multiply-adds × 2 of one transformer forward (:func:`step_flop_parts`, summed)."""
    return sum(step_flop_parts(shape, config).values())


def floor_seconds(flops: float, peak_tflops: float = PEAK_TFLOPS) -> float:
    return flops / (peak_tflops * 1e12)


# --- building the full-size pipeline --------------------------------------------------------


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters created directly on ``device`` in ``dtype`` (no 56 GB fp32 detour)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """The transformer with random weights, everything in ``dtype`` (``from_pretrained`` would
    keep the norms and the time embedder in fp32, a difference far below the timing noise)."""
    from diffusers import ChronoEditTransformer3DModel

    with _building(device, dtype):
        model = ChronoEditTransformer3DModel(**config)
    return model.eval().requires_grad_(False)


def build_full_pipeline(device: torch.device, dtype: torch.dtype):
    """Every part of ChronoEdit-14B from its real configuration, random weights, on ``device``.

    The tokenizer is the tiny model's (UMT5's SentencePiece model is a download); its ids are
    valid UMT5 ids, and the prompt is encoded once at load anyway.
    """
    from diffusers import AutoencoderKLWan, ChronoEditPipeline, UniPCMultistepScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    from predictor.dev.tiny_model import _tokenizer
    from predictor.engines.chronoedit.model import FLOW_SHIFT

    tokenizer, _ = _tokenizer()
    torch.manual_seed(0)
    with _building(device, dtype):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval()
        vae = AutoencoderKLWan().eval()  # diffusers' defaults are the Wan 2.1 VAE
    with _building(device, torch.float32):  # the image encoder runs in fp32, as the engine's
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H14)).eval()
    transformer = build_transformer(WAN_I2V_14B, device, dtype)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
    )
    pipe = ChronoEditPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(),
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_lora(transformer, path: Path, rank: int, seed: int) -> Path:
    """A random LoRA over NVIDIA's targets in diffusers' key format, small enough (‖ΔW‖ a few
    % of ‖W‖) that the random model's output stays finite."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, _ in enumerate(transformer.blocks):
        for target in LORA_TARGETS:
            layer = transformer.get_submodule(f"blocks.{index}.{target}")
            key = f"transformer.blocks.{index}.{target}"
            down = torch.randn(rank, layer.in_features, generator=generator)
            up = torch.randn(layer.out_features, rank, generator=generator)
            tensors[f"{key}.lora_A.weight"] = (down / layer.in_features**0.5).bfloat16()
            tensors[f"{key}.lora_B.weight"] = (up * 0.02 / rank**0.5).bfloat16()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


# --- timing ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_inputs(
    shape: StepShape, config: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    frames, height, width = shape.latent
    generator = torch.Generator(device).manual_seed(0)

    def noise(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, device=device, dtype=dtype)

    return {
        "hidden_states": noise(1, config["in_channels"], frames, height, width),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": noise(1, TEXT_TOKENS, config["text_dim"]),
        "encoder_hidden_states_image": noise(1, IMAGE_TOKENS, config["image_dim"]),
    }


def time_steps(model, inputs: dict[str, torch.Tensor], repeats: int) -> tuple[float, float]:
    """(first call, median of ``repeats`` later calls) in seconds; the first includes any
    compilation."""
    device = inputs["hidden_states"].device
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            _sync(device)
            started = time.perf_counter()
            model(**inputs, return_dict=False)
            _sync(device)
            times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


@dataclass
class Row:
    """One line of the table."""

    mode: str
    request: str
    width: int
    height: int
    tiles: int = 1
    status: str = "ok"
    step_s: float = math.nan
    floor_s: float = math.nan
    outside_s: float = math.nan
    image_s: float = math.nan
    image_measured: bool = False
    warmup_s: float = math.nan
    peak_gib: float = math.nan
    new_graphs: int | None = None
    rank: int | None = None
    note: str = ""

    @property
    def times_floor(self) -> float:
        return self.step_s / self.floor_s

    def dollars(self, price: float) -> float:
        return self.image_s * price / 3600


@dataclass
class Report:
    device: str
    config: str
    budget_s: float
    price: float
    peak_tflops: float
    started: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    bare: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)
    #: where the default request's time goes (:mod:`predictor.dev.bench_gpu_profile`)
    profile: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


def say(*parts: object) -> None:
    print(*parts, flush=True)


def guarded(report: Report, name: str, need_s: float, run: Callable[[], None]) -> bool:
    """Run one stage; an exception is printed and recorded, never fatal. Skipped (and said so)
    when less than ``need_s`` of the budget is left."""
    if report.left() < need_s:
        report.stages[name] = f"SKIPPED (budget: {report.left():.0f} s left, needs ~{need_s:.0f})"
        say(f"\n== {name}: {report.stages[name]}")
        return False
    say(f"\n== {name} ({report.left():.0f} s of budget left)")
    started = time.perf_counter()
    try:
        run()
    except Exception:
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        report.stages[name] = f"FAILED after {time.perf_counter() - started:.1f} s"
        say(f"== {name}: {report.stages[name]}")
        return False
    report.stages[name] = f"ok, {time.perf_counter() - started:.1f} s"
    say(f"== {name}: {report.stages[name]}")
    return True


def graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Bench:
    """Drives one engine through the rows of a stage."""

    def __init__(self, args: argparse.Namespace, report: Report, device: torch.device) -> None:
        self.args = args
        self.report = report
        self.device = device
        self.config = TINY if args.tiny else WAN_I2V_14B
        self.engine = None
        self.loras: list[str] = []
        self.latents: list[torch.Tensor] = []
        self.extra_rank = EXTRA_RANK
        self.variants: set[tuple[str, int, int, int]] = set()
        #: the last full request's output and final latent (the fp8 drift pair)
        self.last_image: tuple[np.ndarray, torch.Tensor] | None = None

    def request(self, width: int, height: int, steps: int, seed: int, extras: int, scale: float):
        from predictor.engines.base import EngineJob, LoraRequest

        loras = tuple(LoraRequest(path, 1.0) for path in self.loras[:extras])
        return EngineJob(
            width=width,
            height=height,
            seed=seed,
            num_inference_steps=steps,
            lora_scale=scale,
            loras=loras,
        )

    def run(self, job, source) -> tuple[float, list[float], Any]:
        """(seconds in all, synchronised stamps after each step, the image)."""
        stamps: list[float] = []

        def progress(done: int, total: int, kind: str) -> None:
            if kind == "step":
                _sync(self.device)
                stamps.append(time.perf_counter())

        _sync(self.device)
        started = time.perf_counter()
        image = self.engine.upscale(source, job, progress)
        _sync(self.device)
        return time.perf_counter() - started, stamps, image

    def row(
        self,
        mode: str,
        name: str,
        size: tuple[int, int],
        extras: int = 0,
        scale: float = 1.0,
        full: bool = False,
        reserve: float = 0.0,
    ) -> Row:
        """Warm up once (compiles this variant), then a timed request of ``measure_steps``;
        with ``full``, the whole ``STEPS``-step request too (when the budget allows). Skipped
        when it would eat into ``reserve`` seconds kept for a later stage."""
        self.last_image = None
        width, height = size
        plan = self.engine.plan(self.request(width, height, 1, 0, 0, 1.0))
        tiles = len(plan)
        row = Row(mode, name, width, height, tiles)
        pass_w, pass_h = plan[0].x1 - plan[0].x0, plan[0].y1 - plan[0].y0
        row.floor_s = floor_seconds(
            step_flops(StepShape(pass_w, pass_h), self.config), self.args.peak_tflops
        )
        # a compiled row whose graph variant is new compiles it first: give it more room
        used = (scale != 1.0) * self.engine.adapters.upscaler_rank + extras * self.extra_rank
        variant = (mode, pass_w, pass_h, self.engine.adapters.bucket(used))
        need = 20.0 if mode.startswith("eager") or variant in self.variants else 90.0
        need *= 0.1 if self.args.tiny else 1.0
        self.variants.add(variant)
        if self.report.left() - reserve < need:
            row.status = "SKIPPED (budget)"
            self._print(row)
            return row
        source = picture(width, height)
        try:
            started = time.perf_counter()
            self.run(self.request(width, height, 2, 0, extras, scale), source)
            row.warmup_s = time.perf_counter() - started
            graphs = graph_count()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            steps = self.args.measure_steps
            job = self.request(width, height, steps, 1, extras, scale)
            total, stamps, _ = self.run(job, source)
            row.rank = self.engine.adapters.rank
            row.step_s = step_seconds(stamps, steps)
            row.outside_s = total - row.step_s * steps * tiles
            row.image_s = row.outside_s + row.step_s * STEPS * tiles
            if full and self.report.left() - reserve > row.image_s + need:
                self.latents.clear()
                total, _, image = self.run(
                    self.request(width, height, STEPS, 1, extras, scale), source
                )
                row.image_s, row.image_measured = total, True
                self.last_image = (np.asarray(image, dtype=np.float64), self.latents[-1])
            row.new_graphs = graph_count() - graphs
            if self.device.type == "cuda":
                row.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        except Exception:
            traceback.print_exc(file=sys.stdout)
            row.status = "FAILED"
        self._print(row)
        return row

    def _print(self, row: Row) -> None:
        self.report.rows.append(row)
        say(format_row(row, self.report.price))


def picture(width: int, height: int):
    """A fixed random half-size input: content for the drift comparison, the same in every
    row."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(
        0, 256, (max(16, height // 2), max(16, width // 2), 3)
    )
    return Image.fromarray(pixels.astype(np.uint8))


def step_seconds(stamps: list[float], steps: int) -> float:
    """The median gap between synchronised step stamps, never across a tile boundary."""
    gaps = [
        later - earlier
        for index, (earlier, later) in enumerate(itertools.pairwise(stamps))
        if (index + 1) % steps
    ]
    return statistics.median(gaps)


def format_row(row: Row, price: float) -> str:
    if row.status != "ok":
        return f"| {row.mode} | {row.request} | {row.width}×{row.height} | {row.status} |"
    image = f"{row.image_s:.2f}" + ("" if row.image_measured else "*")
    graphs = "-" if row.new_graphs is None else str(row.new_graphs)
    return (
        f"| {row.mode} | {row.request} | {row.width}×{row.height} | {row.tiles} | {row.rank} "
        f"| {row.step_s:.3f} | {row.times_floor:.2f} | {row.outside_s:.2f} | {image} "
        f"| {row.dollars(price):.4f} | {row.warmup_s:.1f} | {row.peak_gib:.1f} | {graphs} |"
    )


TABLE_HEAD = (
    "| mode | request | output | tiles | rank | s/step | ×floor | outside steps s "
    "| s/image (30 steps) | $/image | warm-up s | peak GiB | new graphs |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def flop_table(config: dict[str, Any], resolutions, peak_tflops: float) -> str:
    rows = ["| output | tokens | TFLOP/step | floor s/step |", "|---|---|---|---|"]
    for width, height in resolutions:
        shape = StepShape(width, height)
        flops = step_flops(shape, config)
        rows.append(
            f"| {width}×{height} | {shape.tokens(config)} | {flops / 1e12:.1f} "
            f"| {floor_seconds(flops, peak_tflops):.3f} |"
        )
    return "\n".join(rows)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- the stages --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from predictor.engines.blend import tile_shapes

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        say("bench-gpu: no CUDA GPU here, so the harness runs on the tiny configuration (CPU).")
        args.tiny, device = True, torch.device("cpu")
    if args.tiny:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
        if args.resolutions == DEFAULT_RESOLUTIONS:
            args.resolutions = ["64x48"]
    config = TINY if args.tiny else WAN_I2V_14B
    resolutions = [tuple(int(side) for side in item.split("x")) for item in args.resolutions]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = Report(name, "tiny" if args.tiny else "full", args.budget_s, args.gpu_hour_price,
                    args.peak_tflops)  # fmt: skip
    say(f"bench-gpu on {name}, torch {torch.__version__}, config {report.config}, "
        f"budget {args.budget_s:.0f} s")  # fmt: skip
    say(f"\nChronoEdit-14B, FLOPs per denoising step (floor at {args.peak_tflops:g} TFLOP/s):")
    say(flop_table(WAN_I2V_14B, FLOOR_SIZES, args.peak_tflops))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    area = 64 * 32 if args.tiny else 2048 * 1152
    pass_size = tile_shapes(area, 16)[0]
    sizes = {
        "default": (32, 32) if args.tiny else (1280, 720),
        "pass": pass_size,
        "tiled": (96, 64) if args.tiny else (2560, 1440),
    }
    bench = Bench(args, report, device)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    state: dict[str, Any] = {}

    def build() -> None:
        from predictor.dev.tiny_model import build_pipeline

        started = time.perf_counter()
        state["pipe"] = (
            build_pipeline().to(device) if args.tiny else build_full_pipeline(device, dtype)
        )
        state["pipe"].set_progress_bar_config(disable=True)
        transformer = state["pipe"].transformer
        rank, extra = (4, 4) if args.tiny else (UPSCALER_RANK, EXTRA_RANK)
        bench.extra_rank = extra
        write_random_lora(transformer, workdir / "model" / "upsample_lora_diffusers.safetensors",
                          rank, 1)  # fmt: skip
        for index in range(3):
            write_random_lora(transformer, workdir / "loras" / f"extra{index}.safetensors",
                              extra, 10 + index)  # fmt: skip
        bench.loras = [f"extra{index}.safetensors" for index in range(3)]
        params = sum(p.numel() for p in transformer.parameters())
        say(f"built in {time.perf_counter() - started:.1f} s: transformer {params / 1e9:.2f} B "
            f"parameters, {str(dtype).removeprefix('torch.')}")  # fmt: skip

    def bare() -> None:
        transformer = state["pipe"].transformer
        for width, height in resolutions:
            inputs = step_inputs(StepShape(width, height), config, device, dtype)
            _, steady = time_steps(transformer, inputs, args.repeats)
            flops = step_flops(StepShape(width, height), config)
            report.bare.append({"width": width, "height": height, "tflop": flops / 1e12,
                                "floor_s": floor_seconds(flops, args.peak_tflops),
                                "eager_s": steady})  # fmt: skip
            del inputs
        say(bare_table(report))

    def engine() -> None:
        from predictor.engines.chronoedit.engine import ChronoEditEngine
        from predictor.engines.options import LoraSettings

        started = time.perf_counter()
        bench.engine = ChronoEditEngine(
            workdir / "model",
            pipeline=state.pop("pipe"),
            device=device.type,
            max_pass_area=area,
            compile=False,
            loras=LoraSettings(lora_dir=str(workdir / "loras"), max_rank=8 if args.tiny else 64),
        )
        vae = bench.engine.pipe.vae
        decode = vae.decode

        def capture(latents, *rest, **options):  # the final latent of each pass
            bench.latents.append(latents.detach().float().cpu())
            return decode(latents, *rest, **options)

        vae.decode = capture
        say(f"engine loaded in {time.perf_counter() - started:.1f} s; graph variants "
            f"{bench.engine.adapters.variants}")  # fmt: skip

    def rows(mode: str, full: bool, reserve: float = 0.0) -> Callable[[], None]:
        """The issue's targets first, in case the budget runs out; the 720p LoRA rows share
        one rank bucket (cheap once it is compiled); the eager stage is today's path only."""

        def stage() -> None:
            say(TABLE_HEAD)
            bench.row(mode, "default", sizes["default"], full=full)  # the targets: no reserve
            if bench.last_image is not None:
                state[mode] = bench.last_image
            bench.row(mode, "3 extra LoRAs", sizes["default"], extras=3)
            if mode.startswith("eager"):
                bench.row(mode, "default", sizes["pass"], reserve=reserve)
                return
            bench.row(mode, "lora_scale 1.5", sizes["default"], scale=1.5, reserve=reserve)
            bench.row(mode, "1 extra LoRA", sizes["default"], extras=1, reserve=reserve)
            bench.row(mode, "default", sizes["pass"], reserve=reserve)
            bench.row(mode, "default", sizes["tiled"], reserve=reserve)

        return stage

    def where_time_goes() -> None:
        """The default request on the compiled engine: outside the steps by part, the VAE with
        cuDNN's autotuner off and on, and one request's kernels by kind."""
        from predictor.dev import bench_gpu_profile as profile

        width, height = sizes["default"]
        steps = args.measure_steps
        source = picture(width, height)
        job = bench.request(width, height, steps, 1, 0, 1.0)

        def outside() -> float:
            total, stamps, _ = bench.run(job, source)
            return total - step_seconds(stamps, steps) * steps

        pipe = bench.engine.pipe
        parts = profile.outside_parts(pipe, device, outside)
        say(parts_table(parts))
        vae = profile.vae_autotuner(pipe.vae, width, height, device)
        say(vae_table(vae))
        kernels = profile.profile_kernels(lambda: bench.run(job, source), device)
        per = f"per request ({steps} steps)"
        say(kernels.table(per))
        rates = profile.kernel_rates(
            kernels, step_flop_parts(StepShape(width, height), config), steps
        )
        say(rates_line(rates))
        report.profile = {
            "size": f"{width}×{height}",
            "steps": steps,
            "outside": parts,
            "vae": vae,
            "kernels_by_kind": kernels.by_kind,
            "largest_kernels": kernels.top,
            "kernels_table": kernels.table(per),
            "tflops_by_kind": rates,
        }

    def compiled_bare() -> None:
        """Today's bare table, compiled column: the engine's compiled transformer at rank 0
        (no adapter math: the same graph as the bare transformer's)."""
        transformer = bench.engine.pipe.transformer
        for entry in report.bare[-1:]:  # the largest size only: each size is a compile
            inputs = step_inputs(StepShape(entry["width"], entry["height"]), config, device, dtype)
            first, steady = time_steps(transformer, inputs, args.repeats)
            entry["compiled_s"], entry["compile_first_s"] = steady, first
        say(bare_table(report))

    def to_compiled() -> None:
        bench.engine.compile(warm_up=False)  # each row's warm-up compiles its own variant

    def to_fp8() -> None:
        from predictor.engines.chronoedit import fp8
        from predictor.engines.chronoedit.model import quantize_blocks

        if device.type == "cuda":
            fp8.check_support(device)
        started = time.perf_counter()
        layers = quantize_blocks(bench.engine.pipe.transformer)
        bench.engine.precision = "fp8"
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bench.engine.compile(warm_up=False)
        say(f"{layers} linear layers in float8 in {time.perf_counter() - started:.1f} s")

    def drift() -> None:
        if compiled not in state or "compiled fp8" not in state:
            raise RuntimeError("the 30-step default requests of both precisions did not run")
        (image16, latent16), (image8, latent8) = state[compiled], state["compiled fp8"]
        relative = float((latent8 - latent16).norm() / latent16.norm())
        report.drift = {"latent_relative_error": relative, "psnr_db": psnr(image16, image8),
                        "steps": STEPS}  # fmt: skip
        say(f"fp8 vs bf16, default request, seed 1, {STEPS} steps: final latent relative error "
            f"{relative:.4f}, output PSNR {report.drift['psnr_db']:.1f} dB")  # fmt: skip

    scale = 0.1 if args.tiny else 1.0
    base = "bf16" if dtype == torch.bfloat16 else "fp32"  # the tiny CPU run is fp32
    compiled = f"compiled {base}"
    if guarded(report, "build the pipeline (random weights)", 60 * scale, build):
        guarded(report, "bare transformer, eager", 20 * scale, bare)
        if guarded(report, "load the engine", 30 * scale, engine):
            guarded(report, f"engine, eager {base}", 40 * scale, rows(f"eager {base}", False))
            if not args.no_compile and guarded(report, "compile", 10 * scale, to_compiled):
                # keep room for fp8's default request: its target matters more than big sizes
                fp8_reserve = 0.0 if args.no_fp8 else args.fp8_reserve_s * scale
                stage = rows(compiled, True, fp8_reserve)
                guarded(report, f"engine, compiled {base}", 60 * scale, stage)
                guarded(report, "where the time goes", 40 * scale + fp8_reserve,
                        where_time_goes)  # fmt: skip
                # only with plenty of budget left: fp8 (next) matters more than this column
                guarded(report, "bare transformer, compiled", 150 * scale, compiled_bare)
                if not args.no_fp8 and guarded(report, "to fp8", 20 * scale, to_fp8):
                    guarded(report, "engine, compiled fp8", 60 * scale, rows("compiled fp8", True))
                    guarded(report, "fp8 drift", 0, drift)
    finish(report, args)
    return 0


def bare_table(report: Report) -> str:
    lines = [
        "| output | TFLOP/step | floor s/step | eager s/step | ×floor | compiled s/step | ×floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in report.bare:
        compiled = entry.get("compiled_s", math.nan)
        lines.append(
            f"| {entry['width']}×{entry['height']} | {entry['tflop']:.1f} | {entry['floor_s']:.3f} "
            f"| {entry['eager_s']:.3f} | {entry['eager_s'] / entry['floor_s']:.2f} "
            f"| {compiled:.3f} | {compiled / entry['floor_s']:.2f} |"
        )
    return "\n".join(lines)


def parts_table(parts: dict[str, float]) -> str:
    lines = ["| outside the steps | s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.3f} |" for name, seconds in parts.items()]
    return "\n".join(lines)


def rates_line(rates: dict[str, float]) -> str:
    """The achieved rates over the steps: what the ×floor is made of."""
    return "achieved over the steps: " + ", ".join(
        f"{kind} {tflops:.0f} TFLOP/s" for kind, tflops in rates.items()
    )


def vae_table(vae: dict[str, float]) -> str:
    lines = ["| VAE (cudnn.benchmark) | s | on/off |", "|---|---|---|"]
    for name, seconds in vae.items():
        off = vae.get(name.replace("autotuner on", "autotuner off"), seconds)
        lines.append(f"| {name} | {seconds:.3f} | {seconds / off:.2f} |")
    return "\n".join(lines)


def targets(report: Report) -> list[str]:
    """Issue 22's targets against the rows that measure them (full size only)."""
    rows = {(row.mode, row.request, row.width): row for row in report.rows if row.status == "ok"}

    def check(label: str, key: tuple[str, str, int], value: Callable[[Row], float], limit: float,
              unit: str) -> str:  # fmt: skip
        row = rows.get(key)
        if row is None:
            return f"- {label}: not measured"
        got = value(row)
        verdict = "met" if got <= limit else "NOT met"
        return f"- {label}: {got:.3g}{unit} (target ≤ {limit:g}{unit}): {verdict}"

    default, loras = ("compiled bf16", "default", 1280), ("compiled bf16", "3 extra LoRAs", 1280)
    fp8 = ("compiled fp8", "default", 1280)
    compiled = [row for row in rows.values() if not row.mode.startswith("eager")]
    graphs = sum(row.new_graphs or 0 for row in compiled)
    return [
        "targets (issue 22):",
        check("default 720p, bf16, s/image", default, lambda row: row.image_s, 12, " s"),
        check(
            "default 720p, bf16, ×floor per step", default, lambda row: row.times_floor, 1.3, "×"
        ),
        check("3 extra LoRAs, bf16, ×floor per step", loras, lambda row: row.times_floor, 1.4, "×"),
        check("default 720p, fp8, s/image", fp8, lambda row: row.image_s, 9, " s"),
        check("default 720p, fp8, $/image", fp8, lambda row: row.dollars(report.price), 0.01, ""),
        f"- new graphs after warm-up, all compiled rows: {graphs} (target 0)",
    ]


def markdown(report: Report) -> str:
    lines = [
        f"bench-gpu: {report.device}, torch {torch.__version__}, {report.config} configuration, "
        f"floor at {report.peak_tflops:g} TFLOP/s, ${report.price:g} per GPU-hour "
        f"(fal: ${FAL_PRICE} per 720p image)",
        "",
        TABLE_HEAD,
        *(format_row(row, report.price) for row in report.rows),
        "",
        f"\\* s/image = time outside the steps + {STEPS} × steps × tiles, from the measured "
        f"s/step; without \\* the whole {STEPS}-step request was run. rank: the stacked "
        "low-rank pair's rank bucket (0: no adapter math). ×floor: against the bf16 FLOP floor, "
        "fp8 rows too. warm-up: the row's first request "
        "(compiling its graph variant when compiled). new graphs: graphs compiled during the "
        "timed requests, after the warm-up.",
        "",
        "bare transformer (one forward = one step):",
        "",
        bare_table(report),
        "",
    ]
    if report.drift:
        lines.append(
            f"fp8 drift vs bf16 (default 720p request, same seed, {STEPS} steps, random "
            f"weights): final latent relative error {report.drift['latent_relative_error']:.4f}, "
            f"output PSNR {report.drift['psnr_db']:.1f} dB"
        )
    if report.profile:
        profile = report.profile
        lines += [
            "",
            f"where the time goes (compiled, default request at {profile['size']}, "
            f"{profile['steps']} steps):",
            "",
            parts_table(profile["outside"]),
            "",
            vae_table(profile["vae"]),
            "",
            profile["kernels_table"],
            "",
            rates_line(profile["tflops_by_kind"]),
        ]
    if report.config == "full":
        lines += ["", *targets(report)]
    lines += ["", "stages:", *(f"- {name}: {status}" for name, status in report.stages.items())]
    return "\n".join(lines) + "\n"


def finish(report: Report, args: argparse.Namespace) -> None:
    text = markdown(report)
    say("\n" + "=" * 100 + "\n" + text)
    out = os.environ.get("OUT")
    if out:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "bench_gpu.md").write_text(text)
        payload = {**asdict(report), "torch": torch.__version__, "args": vars(args)}
        text = json.dumps(_finite(payload), indent=2, default=str, allow_nan=False)
        (directory / "bench_gpu.json").write_text(text)
        say(f"written to {directory}/bench_gpu.md and bench_gpu.json")


def _finite(value: Any) -> Any:
    """NaN (a figure not measured) as null, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.dev.bench_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="cuda (default; the CPU when absent)")
    parser.add_argument(
        "--resolutions",
        nargs="+",
        default=DEFAULT_RESOLUTIONS,
        help="bare-transformer table: output sizes WxH (multiples of 16)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="bare table: timed steps")
    parser.add_argument("--measure-steps", type=int, default=3, help="steps per timed request")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip the stages that no longer fit, and say so")  # fmt: skip
    parser.add_argument("--gpu-hour-price", type=float, default=4.0, help="$ per GPU-hour")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--no-fp8", action="store_true", help="skip the fp8 stage")
    parser.add_argument(
        "--fp8-reserve-s",
        type=float,
        default=120.0,
        help="budget the compiled bf16 rows leave for the fp8 stage",
    )
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny configuration on the CPU (the harness)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    if args.measure_steps < 2:
        raise SystemExit("--measure-steps must be at least 2 (a step time is a gap between two)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
