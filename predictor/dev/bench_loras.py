"""``make bench``'s LoRA section: swap times against a cold pipeline load, and recompilations.

On the tiny random model (``make-tiny-model``, built in a temporary directory) with random LoRAs
of the slots' full rank over every slot layer:

* cold pipeline load — ``ChronoEditEngine(...)`` from disk, slots included (no compilation);
* uncached LoRA — resolve, hash, read, parse, check and convert a file not seen before;
* cached LoRA — the same path again (a host-cache hit: stat and lookup);
* swap — copying a prepared LoRA into the stack (``AdapterStack.apply``), the per-request cost;
* recompilations — with ``--compile``, graphs and frames compiled while a sequence of different
  LoRA sets runs after warm-up (should be 0);
* and a full-size estimate: the copy of a 14B-shaped rank-64 LoRA (40 blocks × 12 slot layers,
  bf16) between two host buffers, as a stand-in for the host → GPU copy a swap does.

``python -m predictor.dev.bench_loras`` prints the table alone.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from predictor.engines.base import EngineJob, LoraRequest
from predictor.engines.options import LoraSettings

RANK = 16
#: the 14B transformer's slot layers per block: (in, out) of q/k/v/o ×2, add_k/add_v, FFN
FULL_SIZE_LAYERS = [(5120, 5120)] * 10 + [(5120, 13824), (13824, 5120)]
FULL_SIZE_BLOCKS = 40


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _write_loras(directory: Path, shapes: dict[str, tuple[int, int]], count: int) -> list[str]:
    from safetensors.torch import save_file

    from predictor.loras.formats import to_format

    names = []
    for index in range(count):
        generator = torch.Generator().manual_seed(1000 + index)
        modules = {
            module: (
                torch.randn(RANK, in_features, generator=generator) * 0.3,
                torch.randn(out_features, RANK, generator=generator) * 0.3,
            )
            for module, (in_features, out_features) in shapes.items()
        }
        tensors, metadata = to_format(modules, ("diffusers", "wan", "kohya")[index % 3], alpha=RANK)
        name = f"bench_{index}.safetensors"
        save_file(tensors, str(directory / name), metadata=metadata)
        names.append(name)
    return names


def _full_size_copy_ms(repeats: int = 3) -> tuple[float, float]:
    """(MB, ms) to copy a 14B-shaped rank-64 bf16 LoRA between host buffers."""
    pairs = []
    for in_features, out_features in FULL_SIZE_LAYERS * FULL_SIZE_BLOCKS:
        for shape in ((64, in_features), (out_features, 64)):
            pairs.append(
                (torch.randn(shape).to(torch.bfloat16), torch.empty(shape, dtype=torch.bfloat16))
            )
    megabytes = sum(source.nbytes for source, _ in pairs) / 1e6
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for source, target in pairs:
            target.copy_(source)
        samples.append(time.perf_counter() - started)
    return megabytes, _median_ms(samples)


def measure(repeats: int = 5) -> dict[str, float]:
    """The figures of :func:`lora_table` (milliseconds unless named otherwise)."""
    from PIL import Image
    from torch._dynamo.utils import counters

    from predictor.dev.tiny_model import build_tiny_model
    from predictor.engines.chronoedit.engine import ChronoEditEngine
    from predictor.loras.sources import LoraLoader

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        model_dir = build_tiny_model(root / "tiny")
        lora_dir = root / "loras"
        lora_dir.mkdir()
        settings = LoraSettings(lora_dir=str(lora_dir), max_rank=RANK, cache_dir=str(root / "c"))
        loads = []
        for _ in range(2):
            started = time.perf_counter()
            engine = ChronoEditEngine(model_dir, max_pass_area=32 * 32, loras=settings)
            loads.append(time.perf_counter() - started)
        figures["cold_load_ms"] = _median_ms(loads)
        layout = engine.adapters.layout
        names = _write_loras(lora_dir, layout.shapes, repeats + 3)
        figures["lora_kb"] = (lora_dir / names[0]).stat().st_size / 1000
        figures["layers"] = len(layout.shapes)

        uncached, cached, swaps = [], [], []
        loader = LoraLoader(settings, layout)
        for name in names[:repeats]:
            started = time.perf_counter()
            prepared = loader.load(name, 0)
            uncached.append(time.perf_counter() - started)
            started = time.perf_counter()
            loader.load(name, 0)
            cached.append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.adapters.apply(1.0, [(prepared, 1.0)])  # a different LoRA each time: a real copy
            swaps.append(time.perf_counter() - started)
        figures["uncached_ms"] = _median_ms(uncached)
        figures["cached_ms"] = _median_ms(cached)
        figures["swap_ms"] = _median_ms(swaps)
        engine.adapters.apply(1.0, [])

        source = Image.new("RGB", (16, 16), (120, 130, 140))

        def job(*paths: str) -> EngineJob:
            loras = tuple(LoraRequest(path, 1.0) for path in paths)
            return EngineJob(width=32, height=32, seed=0, num_inference_steps=2, loras=loras)

        for label, paths in (("request_none_ms", ()), ("request_three_ms", tuple(names[:3]))):
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                engine.upscale(source, job(*paths))
                samples.append(time.perf_counter() - started)
            figures[label] = _median_ms(samples)
        engine.close()

        started = time.perf_counter()
        compiled = ChronoEditEngine(model_dir, max_pass_area=32 * 32, compile=True, loras=settings)
        figures["compiled_load_ms"] = (time.perf_counter() - started) * 1000
        graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
        sequences = [names[0:1], names[1:3], (), names[3:6], names[2:3], names[4:5], ()]
        for paths in sequences:
            compiled.upscale(source, job(*paths))
        figures["requests_after_warmup"] = len(sequences)
        figures["new_graphs"] = counters["stats"]["unique_graphs"] - graphs
        figures["recompiled_frames"] = counters["frames"]["total"] - frames
        compiled.close()
    figures["full_mb"], figures["full_copy_ms"] = _full_size_copy_ms()
    return figures


def lora_table() -> str:
    """Markdown: swap figures on the tiny model, then the full-size copy estimate."""
    figures = measure()
    rows = [
        f"Tiny model, LoRAs of rank {RANK} over all {figures['layers']:.0f} slot layers "
        f"({figures['lora_kb']:.0f} kB files, diffusers/Wan/kohya keys), medians:",
        "",
        "| what | time |",
        "|---|---|",
        f"| cold pipeline load (`ChronoEditEngine`, 3 slots) | {figures['cold_load_ms']:.0f} ms |",
        f"| LoRA load, uncached (hash, read, parse, check, convert) | "
        f"{figures['uncached_ms']:.2f} ms |",
        f"| LoRA load, host-cache hit | {figures['cached_ms']:.3f} ms |",
        f"| swap into a slot (copy + scale) | {figures['swap_ms']:.2f} ms |",
        f"| request 32², 2 steps, no LoRA | {figures['request_none_ms']:.0f} ms |",
        f"| request 32², 2 steps, 3 cached LoRAs | {figures['request_three_ms']:.0f} ms |",
        "",
        f"`--compile` (load and warm-up {figures['compiled_load_ms'] / 1000:.1f} s), then "
        f"{figures['requests_after_warmup']:.0f} requests with different LoRA sets: "
        f"**{figures['new_graphs']:.0f} new graphs, {figures['recompiled_frames']:.0f} "
        "recompiled frames**.",
        "",
        f"Full-size estimate: a 14B-shaped rank-64 LoRA (40 blocks × 12 slot layers, bf16, "
        f"{figures['full_mb']:.0f} MB) copied between host buffers in "
        f"{figures['full_copy_ms']:.0f} ms on this machine (a swap on a GPU copies the same bytes "
        "from page-locked host memory).",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(lora_table())
