"""``make bench``'s ``sr`` section: each network's execution paths against today's and ncnn's.

In one process and one run: today's path (torch float32, NCHW) as the baseline, the other torch
paths, the path the engine chooses on this CPU, and ncnn on the same .param/.bin files and the
same tiles as the peer; their ratios; each path's achieved GFLOP/s from the network's FLOP count
next to this machine's own matmul throughput in float32 and bf16; whole images (a 512² photo ×2,
served over HTTP too; Real-ESRGAN 256² → 1024²; ×4 of a 1 MP photo with its peak memory); tile
sizes; and fidelity (PSNR gain over bicubic, largest difference to float32) on scikit-image's
photos. Timings interleave the paths round by round and keep each one's best, so a neighbour's
load on a shared machine hits them alike. Alone: ``python -m predictor.dev.bench_sr``.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata

import httpx
import numpy as np
import torch
from PIL import Image
from torch import nn

from predictor.dev.local_server import local_server
from predictor.dev.quality import roundtrip_psnr
from predictor.engines.base import EngineJob
from predictor.engines.cpu_paths import CpuCapability, SRPath, cgroup_cpu_limit, ncnn_available
from predictor.engines.sr import SREngine
from predictor.engines.sr_nets import UpConv7

PHOTOS = ("astronaut", "chelsea", "coffee")
TODAY = SRPath("torch", "fp32", False, "the baseline: today's path")
FP32_CL = SRPath("torch", "fp32", True, "candidate")
BF16_CL = SRPath("torch", "bf16", True, "candidate")
NCNN = SRPath("ncnn", "fp32", False, "the peer")


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def best_of(
    fns: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True
) -> dict[str, float]:
    """Seconds per call, best of ``rounds``, the calls interleaved round by round (after one
    warm-up each unless ``warm_up`` is false)."""
    for fn in fns.values() if warm_up else ():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def machine() -> str:
    """CPU model, cores, bf16 unit, quota, threads and versions, in one line."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        model = fields.get("Model name", "?").strip()
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    cpu = CpuCapability.detect()
    quota = cgroup_cpu_limit()
    ncnn = metadata.version("ncnn") if ncnn_available() else "not installed"
    return (
        f"{model}, {os.cpu_count()} CPUs ({cpu.describe()}), cgroup quota "
        f"{'none' if quota is None else f'{quota:g} CPUs'}; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), ncnn {ncnn}"
    )


MATMUL_N = 2048


def matmul(dtype: torch.dtype, n: int = MATMUL_N) -> Callable[[], object]:
    """One dense ``n``² matmul in ``dtype``: the machine's own throughput probe (2n³ FLOP)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return lambda: torch.mm(a, b)


def conv_flops(fn: nn.Module, window: tuple[int, int, int, int]) -> int:
    """Multiply-adds × 2 of every (de)convolution for one input ``window``, on the meta device."""
    flops = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal flops
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel scatters a kernel
            flops += 2 * inputs[0].numel() * module.out_channels * k
        else:
            flops += 2 * output.numel() * module.in_channels * k

    meta = copy.deepcopy(fn).to("meta")
    for module in meta.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.register_forward_hook(count)
    with torch.inference_mode():
        meta(torch.empty(window, device="meta"))
    return flops


def _paths() -> list[SRPath]:
    return [TODAY, FP32_CL, BF16_CL, *([NCNN] if ncnn_available() else [])]


def path_engines(engine: SREngine) -> dict[str, SREngine]:
    """One engine per path, each with its own copy of the network: a path's tensor layout is a
    property of the module's weights, so paths must not share one module while interleaved."""
    engines = {}
    for path in _paths():
        copy_ = SREngine(engine.model, tile_size=engine.tile_size, threads=engine.threads)
        copy_.use_path(path)
        engines[path.label] = copy_
    return engines


def _window(engine: SREngine) -> torch.Tensor:
    side = engine.tile_size + 2 * engine.context
    return torch.rand(1, 3, side, side)


def tile_table(engine: SREngine, chosen: SRPath, peaks: dict[str, float], rounds: int) -> str:
    """One full tile of the engine's size (plus context) through each path, interleaved with
    the matmul probes (their best GFLOP/s so far goes into ``peaks``)."""
    window = _window(engine)
    body = engine.net.body if isinstance(engine.net, UpConv7) else engine.net
    flops = conv_flops(body, tuple(window.shape))
    fns: dict[str, Callable[[], object]] = {
        "fp32": matmul(torch.float32),
        "bf16": matmul(torch.bfloat16),
    }
    for label, copy_ in path_engines(engine).items():

        def run(tile_fn=copy_._tile_fn) -> None:
            with torch.inference_mode():
                tile_fn(window)

        fns[label] = run
    times = best_of(fns, rounds)
    for dtype in ("fp32", "bf16"):
        peaks[dtype] = max(peaks.get(dtype, 0.0), 2 * MATMUL_N**3 / times.pop(dtype) / 1e9)
    today, peer = times[TODAY.label], times.get(NCNN.label)
    rows = [
        f"{engine.model}, one {window.shape[-1]}² tile ({engine.tile_size} px + "
        f"{engine.context} px context), {flops / 1e9:.1f} GFLOP, best of {rounds}:",
        "",
        "| path | time per tile | vs today | vs ncnn | GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for label, seconds in times.items():
        mark = " **(chosen)**" if label == chosen.label else ""
        peak = peaks["bf16" if "bf16" in label else "fp32"]
        rate = flops / seconds / 1e9
        rows.append(
            f"| {label}{mark} | {seconds:.3f} s | {seconds / today:.2f} "
            f"| {'—' if peer is None else f'{seconds / peer:.2f}'} | {rate:.0f} "
            f"| {rate / peak:.0%} of {'bf16' if 'bf16' in label else 'fp32'} |"
        )
    return "\n".join(rows)


class _TimedTiles:
    """Wraps a tile function and adds up the seconds spent inside it (bare compute)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        try:
            return self.fn(window)
        finally:
            self.seconds += time.perf_counter() - started


def _served_seconds(source: Image.Image, repeats: int = 5) -> float:
    """Median wall time of ×2 over HTTP: request, decode, engine, resize, encode, download."""

    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    body = {
        "image_url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "output_format": "jpeg",
    }
    walls = []
    with local_server() as (url, _log), httpx.Client(timeout=300) as client:
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            response = client.post(f"{url}/fal-ai/chrono-edit-lora-gallery/upscaler", json=body)
            response.raise_for_status()
            client.get(response.json()["images"][0]["url"]).raise_for_status()
            if attempt:  # the first is a warm-up
                walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def whole_image_table(
    engines: dict[str, SREngine], chosen: dict[str, SRPath], rounds: int, served: bool
) -> str:
    """Whole images through today's path, the chosen one and ncnn, interleaved."""
    source = photo("astronaut").resize((512, 512), Image.LANCZOS)
    cases = [
        ("waifu2x", "×2 of a 512² photo", source, EngineJob(width=1024, height=1024, seed=0)),
        (
            "realesrgan",
            "Real-ESRGAN 256² → 1024²",
            source.resize((256, 256), Image.LANCZOS),
            EngineJob(width=1024, height=1024, seed=0),
        ),
    ]
    rows = [
        "| image | today (fp32 NCHW) | chosen path | ncnn engine | ncnn bare compute "
        "| chosen / today | chosen / ncnn bare |",
        "|---|---|---|---|---|---|---|",
    ]
    served_row = ""
    for model, label, image, job in cases:
        by_path = path_engines(engines[model])
        paths = {"today": TODAY, "chosen": chosen[model]}
        if ncnn_available():
            paths["ncnn"] = NCNN
        compute: dict[str, float] = {}  # best bare tile-compute seconds per path

        def run(key: str, engine: SREngine, image=image, job=job, compute=compute) -> None:
            tile_fn = engine._tile_fn
            engine._tile_fn = timed = _TimedTiles(tile_fn)
            try:
                engine.upscale(image, job)
            finally:
                engine._tile_fn = tile_fn
            compute[key] = min(compute.get(key, float("inf")), timed.seconds)

        fns = {
            key: (lambda key=key, engine=by_path[path.label]: run(key, engine))
            for key, path in paths.items()
        }
        times = best_of(fns, rounds)
        del by_path
        bare = compute.get("ncnn", float("nan"))
        rows.append(
            f"| {label} | {times['today']:.2f} s | {times['chosen']:.2f} s "
            f"({chosen[model].label}) | {times.get('ncnn', float('nan')):.2f} s | {bare:.2f} s "
            f"| {times['chosen'] / times['today']:.2f} | {times['chosen'] / bare:.2f} |"
        )
        if model == "waifu2x" and served:
            wall = _served_seconds(image)
            served_row = (
                f"\nServed over HTTP (`chrono-upscaler serve` defaults, loopback; PNG in, JPEG "
                f"out, downloaded; median of 5): {wall:.2f} s = {wall / bare:.2f} × ncnn's bare "
                f"compute for the same tiles, {wall / times['today']:.2f} × today's engine alone."
            )
    return "\n".join(rows) + "\n" + served_row


LARGE_SCRIPT = """
import sys, time
from PIL import Image
from predictor.dev.bench_sr import photo
from predictor.engines.base import EngineJob
from predictor.engines.sr import SREngine
engine = SREngine(sys.argv[1])
image = photo("coffee").resize((1000, 1000), Image.LANCZOS)
def peak_mib():  # VmHWM: this process's own high-water mark (ru_maxrss inherits the parent's)
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
before = peak_mib()
started = time.perf_counter()
out = engine.upscale(image, EngineJob(width=4000, height=4000, seed=0))
seconds = time.perf_counter() - started
print(seconds, before, peak_mib(), engine.path.label)
"""


def large_output_line(model: str = "waifu2x") -> str:
    """×4 of a 1 MP photo in a fresh process: time and peak memory (VmHWM)."""
    done = subprocess.run(
        [sys.executable, "-c", LARGE_SCRIPT, model], capture_output=True, text=True, check=True
    )
    seconds, loaded, peak, *label = done.stdout.split()
    return (
        f"×4 of a 1 MP photo (1000² → 4000², {model}, {' '.join(label)}, fresh process): "
        f"{float(seconds):.1f} s; peak RSS {float(peak):.0f} MiB "
        f"({float(loaded):.0f} MiB after loading, +{float(peak) - float(loaded):.0f} MiB)."
    )


def tile_size_table(engine: SREngine, sizes: tuple[int, ...], rounds: int) -> str:
    """The chosen path's cost per owned input pixel at several tile sizes (context included)."""
    fns = {}
    for size in sizes:
        side = size + 2 * engine.context
        window = torch.rand(1, 3, side, side)

        def run(window=window) -> None:
            with torch.inference_mode():
                engine._tile_fn(window)

        fns[size] = run
    times = best_of(fns, rounds)
    return "\n".join(
        [
            f"| {engine.model} ({engine.path.label}) | "
            + " | ".join(f"{s} px" for s in sizes)
            + " |",
            f"|---|{'---|' * len(sizes)}",
            "| µs per owned input pixel | "
            + " | ".join(f"{times[s] / s**2 * 1e6:.2f}" for s in sizes)
            + " |",
        ]
    )


def fidelity_table(engines: dict[str, SREngine], chosen: dict[str, SRPath]) -> str:
    """×2 round trips: PSNR gain over bicubic in fp32 and on the chosen path, and how far apart."""
    rows = [
        "| model, photo | gain fp32 | gain chosen | Δ gain | max \\|diff\\| | mean \\|diff\\| |",
        "|---|---|---|---|---|---|",
    ]
    for model, engine in engines.items():
        for name in PHOTOS:
            original = photo(name)
            outputs: dict[str, np.ndarray] = {}
            gains = {}
            for key, path in (("fp32", TODAY), ("chosen", chosen[model])):
                engine.use_path(path)

                def upscale(
                    img: Image.Image, w: int, h: int, key=key, engine=engine, outputs=outputs
                ) -> Image.Image:
                    out = engine.upscale(img, EngineJob(width=w, height=h, seed=0))
                    outputs[key] = np.asarray(out).astype(int)
                    return out

                gains[key] = roundtrip_psnr(original, upscale).gain_db
            diff = np.abs(outputs["chosen"] - outputs["fp32"])
            rows.append(
                f"| {model}, {name} | {gains['fp32']:+.3f} dB | {gains['chosen']:+.3f} dB "
                f"| {gains['chosen'] - gains['fp32']:+.3f} dB | {diff.max()} "
                f"| {diff.mean():.3f} |"
            )
            engine.use_path(chosen[model])
    return "\n".join(rows)


def sr_section(rounds: int = 3, served: bool = True) -> str:
    """The whole ``sr`` section as markdown (a few minutes on 2 cores)."""
    engines = {model: SREngine(model) for model in ("waifu2x", "realesrgan")}
    chosen = {model: engine.path for model, engine in engines.items()}
    peaks: dict[str, float] = {}
    tiles = [tile_table(e, chosen[m], peaks, rounds) for m, e in engines.items()]
    parts = [
        f"Machine: {machine()}.",
        "",
        "Chosen paths: "
        + "; ".join(f"{m}: {p.label} ({p.reason})" for m, p in chosen.items())
        + ".",
        "",
        f"Matmul throughput ({MATMUL_N}², torch.mm, interleaved with the tiles, best): "
        f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s.",
        "",
        "### One tile per path",
        "",
        *(table + "\n" for table in tiles),
        "### Whole images (best of 2, interleaved)",
        "",
        whole_image_table(engines, chosen, rounds=2, served=served),
        "",
        large_output_line(),
        "",
        "### Chosen path: time per owned input pixel by tile size (best of 3)",
        "",
        tile_size_table(engines["waifu2x"], (128, 192, 256, 384, 512), rounds=3),
        "",
        tile_size_table(engines["realesrgan"], (128, 160, 192, 256), rounds=2),
        "",
        "### Fidelity: ×2 round trips, chosen path against float32",
        "",
        fidelity_table(engines, chosen),
    ]
    return "\n".join(parts)


def main() -> None:
    print(f"## sr engine: execution paths — {time.strftime('%Y-%m-%d')}\n")
    print(sr_section())


if __name__ == "__main__":
    main()
