"""``make bench-gpu``: seconds per denoising step of the full-size ChronoEdit-14B transformer.

Builds ``ChronoEditTransformer3DModel`` with the Wan2.1-I2V-14B configuration and random
weights directly on the GPU in bf16 (no download), then times one transformer forward with the
shapes of a real upscaling step: 5 frames → 2 latent frames, 512 text tokens, 257 CLIP image
tokens, at 832×480 and 1280×720, eager and with ``torch.compile`` (regional, static shapes, as
the engine's ``--compile`` does). Each step is compared with its FLOP floor (docs/chronoedit.md,
counted analytically below, at ``--peak-tflops``, 800 by default). One forward per step is the
guidance ≤ 1 case; CFG doubles it.

Without a CUDA GPU it prints the analytic FLOP table, says it needs a GPU, and exits 0.
``--tiny`` runs the same harness on a tiny config (any device) to check the harness itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

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
TEXT_TOKENS = 512  # max_sequence_length (WanAttnProcessor assumes it)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224²: 16² patches + the class token
LATENT_FRAMES = 2  # 5 frames, VAE time stride 4
VAE_STRIDE = 8
RESOLUTIONS = ((832, 480), (1280, 720))
PEAK_TFLOPS = 800.0  # a dense bf16 peak for H100/H200-class GPUs (docs/chronoedit.md)


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


def step_flops(shape: StepShape, config: dict[str, Any] = WAN_I2V_14B) -> float:
    """Multiply-adds × 2 of one transformer forward (matmuls and attention; norms, RoPE and
    element-wise work are left out, they are far below 1%)."""
    tokens = shape.tokens(config)
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    context = TEXT_TOKENS + IMAGE_TOKENS
    per_block = (
        2 * tokens * dim * dim * 4  # self-attention q, k, v, out
        + 2 * tokens * tokens * dim * 2  # self-attention scores and weighted sum
        + 2 * tokens * dim * dim * 2  # cross-attention q, out
        + 2 * context * dim * dim * 2  # cross-attention k, v (text) and added k, v (image)
        + 2 * tokens * context * dim * 2  # cross-attention over text and image tokens
        + 2 * tokens * dim * config["ffn_dim"] * 2  # feed-forward up and down
    )
    patch = (
        2 * tokens * dim * config["in_channels"] * 4 + 2 * tokens * dim * config["out_channels"] * 4
    )
    text = 2 * TEXT_TOKENS * (config["text_dim"] * dim + dim * dim)
    image = 2 * IMAGE_TOKENS * (config["image_dim"] ** 2 + config["image_dim"] * dim)
    return config["num_layers"] * per_block + patch + text + image


def floor_seconds(flops: float, peak_tflops: float = PEAK_TFLOPS) -> float:
    return flops / (peak_tflops * 1e12)


def build_transformer(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """Random weights, created directly on ``device`` in ``dtype`` (no 56 GB fp32 detour).

    Everything is in ``dtype``; ``from_pretrained`` would keep the norms and the time embedder
    in fp32, a difference far below the timing noise.
    """
    from diffusers import ChronoEditTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = ChronoEditTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def flop_table(config: dict[str, Any], resolutions, peak_tflops: float) -> str:
    rows = [
        "| output | tokens | TFLOP/step | floor s/step |",
        "|---|---|---|---|",
    ]
    for width, height in resolutions:
        shape = StepShape(width, height)
        flops = step_flops(shape, config)
        rows.append(
            f"| {width}×{height} | {shape.tokens(config)} | {flops / 1e12:.1f} "
            f"| {floor_seconds(flops, peak_tflops):.3f} |"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    config = TINY if args.tiny else WAN_I2V_14B
    resolutions = [tuple(int(side) for side in item.split("x")) for item in args.resolutions]
    device = torch.device(args.device)
    print(f"analytic FLOPs per denoising step (floor at {args.peak_tflops:g} TFLOP/s):")
    print(flop_table(config, resolutions, args.peak_tflops))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("\nbench-gpu needs a CUDA GPU to time steps; none is available here (skipped).")
        return 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    started = time.perf_counter()
    model = build_transformer(config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"\n{name}: {params / 1e9:.2f} B parameters, {str(dtype).removeprefix('torch.')}, "
        f"built in {time.perf_counter() - started:.1f} s"
    )
    results: dict[tuple[int, int], dict[str, float]] = {}
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    for mode in modes:
        if mode == "compiled":
            model.compile_repeated_blocks(dynamic=False)
        for width, height in resolutions:
            inputs = step_inputs(StepShape(width, height), config, device, dtype)
            first, steady = time_steps(model, inputs, args.repeats)
            results.setdefault((width, height), {})[mode] = steady
            results[(width, height)][f"{mode}_first"] = first
            del inputs
    print(
        "\n| output | TFLOP/step | floor s/step | "
        + " | ".join(f"{mode} s/step | ×floor | {mode} TFLOP/s" for mode in modes)
        + " |"
    )
    print("|---|---|---|" + "---|---|---|" * len(modes))
    for (width, height), timing in results.items():
        flops = step_flops(StepShape(width, height), config)
        floor = floor_seconds(flops, args.peak_tflops)
        cells = [
            f"{timing[mode]:.3f} | {timing[mode] / floor:.2f} | {flops / timing[mode] / 1e12:.0f}"
            for mode in modes
        ]
        print(
            f"| {width}×{height} | {flops / 1e12:.1f} | {floor:.3f} | " + " | ".join(cells) + " |"
        )
    if "compiled" in modes:
        for (width, height), timing in results.items():
            print(f"compile + first step at {width}×{height}: {timing['compiled_first']:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m predictor.dev.bench_gpu", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    parser.add_argument(
        "--resolutions",
        nargs="+",
        default=[f"{w}x{h}" for w, h in RESOLUTIONS],
        help="output sizes WxH (multiples of 16)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--no-compile", action="store_true", help="time eager only")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny config, to check the harness on any device"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
