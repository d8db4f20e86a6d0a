"""The ``chronoedit`` engine: NVIDIA's ChronoEdit-14B with its Upscaler LoRA (the product).

ChronoEdit edits an image by generating a short video from it; for upscaling, the input is
first resized to the output size (Lanczos) and the pipeline renders 5 frames (2 latent frames)
whose last frame is the result. The prompt is NVIDIA's fixed trigger text, encoded once at
load. Outputs above ``max_pass_area`` pixels are rendered as overlapping tiles blended over
their overlaps (:mod:`.blend`). See docs/chronoedit.md.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from predictor import metrics
from predictor.codec import to_rgb
from predictor.engines.options import LoraSettings
from predictor.errors import feature_not_supported
from predictor.loras.slots import AdapterStack
from predictor.loras.sources import LoraLoader
from predictor.loras.sources import describe as describe_loras

from ..base import SAFETY_FLAGGED_KEY, Engine, EngineJob, ProgressFn
from ..blend import (
    PassTile,
    blend_tiles,
    default_overlap,
    plan_pass_tiles,
    tile_shapes,
)
from ..options import GPU_PRECISIONS, ChronoEditOptions
from ..pixels import to_uint8
from ..safety import DiffusersSafetyChecker, SafetyChecker, blacked_out
from . import fp8, model
from .compile_cache import CompileCache, compile_key
from .loader import StartupReport, adopt_pipeline, default_cache_dir, load_pipeline

if TYPE_CHECKING:
    from diffusers import ChronoEditPipeline

log = logging.getLogger("predictor.engines.chronoedit")

#: how the input is brought to the output size before diffusion refines it
GUIDE_FILTER = Image.Resampling.LANCZOS
#: one step compiles a variant: the transformer's graph is the same at every step (the
#: timestep is a tensor input); the scheduler and the VAE are not compiled
WARMUP_STEPS = 1


class ChronoEditEngine(Engine):
    """ChronoEdit + Upscaler LoRA via diffusers' ``ChronoEditPipeline``."""

    name = "chronoedit"
    prompt = model.UPSCALER_PROMPT
    size_multiple = 16
    supports_loras = (
        True  # request LoRAs are hot-swapped into slots (docs/loras.md, predictor.loras)
    )

    def __init__(
        self,
        model_dir: str | Path = ChronoEditOptions.model_dir,
        upscaler_lora: str | Path | None = None,
        distill_lora: str | Path | None = None,
        dtype: str = "auto",
        device: str = "auto",
        max_pass_area: int = ChronoEditOptions.max_pass_area,
        compile: bool | None = None,
        precision: str = "bf16",
        safety_checker_dir: str | Path | None = None,
        safety_checker: SafetyChecker | None = None,
        tile_overlap: int | None = None,
        flow_shift: float | None = None,
        threads: int | None = None,
        loras: LoraSettings | None = None,
        cache_dir: str | Path | None = None,
        pipeline: ChronoEditPipeline | None = None,
    ) -> None:
        """Load everything once; a missing file fails here, at start-up, never per request.

        ``distill_lora`` fuses NVIDIA's 8-step LoRA (and defaults ``flow_shift`` to 2, else 5).
        ``safety_checker`` (an object) overrides ``safety_checker_dir`` (a directory for
        :class:`DiffusersSafetyChecker`). ``tile_overlap`` is in output pixels (default: a
        quarter of a tile side, at most 128). ``loras``: request-LoRA sources, limits and slots
        (docs/loras.md); ``LoraSettings(slots=0)`` turns request LoRAs off. ``compile`` None:
        compiled on CUDA, eager on the CPU. ``precision`` ``fp8``: the transformer blocks' linear
        layers in float8 (:mod:`.fp8`; refused where the GPU has no fp8). ``cache_dir`` holds
        the prompt-embedding cache (when the model directory is read-only) and the compile
        cache (default ``$CHRONO_UPSCALER_CACHE_DIR`` or ``~/.cache/chrono-upscaler``).
        ``pipeline``: an already built pipeline (on the CPU or the device) instead of loading
        ``model_dir`` (``make bench-gpu``'s full-size random model); the Upscaler LoRA is still
        read from its file.
        """
        started = time.perf_counter()
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = model.resolve_device(device)
        self.dtype = model.resolve_dtype(dtype, self.device)
        if precision not in GPU_PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(GPU_PRECISIONS)}, got {precision!r}"
            )
        if precision == "fp8":
            fp8.check_support(self.device, self.dtype)  # before minutes of loading
        self.precision = precision
        if max_pass_area < 32 * 32:
            raise ValueError(f"max_pass_area must be at least 1024 pixels, got {max_pass_area}")
        self.max_pass_area = max_pass_area
        self.tile_overlap = default_overlap(max_pass_area) if tile_overlap is None else tile_overlap
        self.model_dir = model.resolve_local_dir(model_dir)
        self.upscaler_lora = model.find_upscaler_lora(self.model_dir, upscaler_lora)
        self.distill_lora = (
            model.find_distill_lora(distill_lora) if distill_lora is not None else None
        )
        self.lora_settings = loras or LoraSettings()
        # the catalog and --lora-dir are checked now, before minutes of weight loading
        loader = LoraLoader(self.lora_settings) if self.lora_settings.slots else None
        if flow_shift is None:
            flow_shift = model.DISTILL_FLOW_SHIFT if self.distill_lora else model.FLOW_SHIFT
        self.flow_shift = flow_shift

        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        #: how this start went, phase by phase (logged; read by predictor.dev.bench_startup)
        self.startup = StartupReport()
        if pipeline is not None:
            self.pipe, self.embeddings = adopt_pipeline(pipeline, self.device)
        else:
            self.pipe, self.embeddings = load_pipeline(
                self.model_dir, self.dtype, self.device, flow_shift, self.cache_dir, self.startup
            )
        if self.distill_lora is not None:
            model.fuse_distill_lora(self.pipe, self.distill_lora)
        # the upscaler merged into the weights, every adapted layer ready for one stacked pair
        self.adapters = AdapterStack.install(
            self.pipe.transformer,
            model.read_upscaler_lora(self.upscaler_lora),
            self.lora_settings.slots,
            self.lora_settings.max_rank,
        )
        if precision == "fp8":  # after the merge: the float8 weights hold the upscaler too
            model.quantize_blocks(self.pipe.transformer)
        if loader is not None:
            loader.layout = self.adapters.layout
        self.loras = loader
        self.supports_loras = loader is not None
        #: the pipeline's scheduler and the adapter stack are shared state: one pass at a time
        self._lock = threading.Lock()

        if safety_checker is None and safety_checker_dir is not None:
            safety_checker = DiffusersSafetyChecker(safety_checker_dir, self.device)
        self.safety_checker = safety_checker
        #: images withheld (replaced by black) since start-up; exported as a metric
        self.safety_flagged = 0
        if safety_checker is None:
            log.warning(
                "chronoedit safety_checker=none: requests with enable_safety_checker=true are "
                "NOT checked; pass --safety-checker-dir to enable it"
            )

        self.compiled = False
        if compile is None:  # compiled by default where it pays: on a GPU
            compile = self.device.type == "cuda"
        if compile:
            self.compile()
        self.startup.phases["total"] = round(time.perf_counter() - started, 3)
        log.info(
            "chronoedit loaded model_dir=%s upscaler_lora=%s distill_lora=%s device=%s dtype=%s "
            "precision=%s flow_shift=%g max_pass_area=%d compiled=%s variants=%s safety_checker=%s "
            "embeddings=%s compile_cache=%s phases=%s load_s=%.1f",
            self.model_dir,
            self.upscaler_lora,
            self.distill_lora,
            self.device,
            str(self.dtype).removeprefix("torch."),
            precision,
            flow_shift,
            max_pass_area,
            self.compiled,
            ",".join(map(str, self.adapters.variants)),
            self.safety_checker.source if self.safety_checker else None,
            self.startup.embeddings,
            self.startup.compile_cache,
            ",".join(f"{name}:{seconds:g}" for name, seconds in self.startup.phases.items()),
            time.perf_counter() - started,
        )

    def compile(self, warm_up: bool = True) -> None:
        """Regional ``torch.compile`` of the transformer blocks, then (by default) the warm-up
        that compiles every graph variant of the default bucket — hot-loading the artifacts a
        previous start saved for the same torch, GPU, dtype, precision, variants, shapes and
        transformer (:mod:`.compile_cache`), and saving them after a miss."""
        config = {
            **self.pipe.transformer.config,
            "precision": self.precision,
            "variants": list(self.adapters.variants),
            "distilled": self.distill_lora is not None,
        }
        cache = CompileCache(
            self.cache_dir, compile_key(self.device, self.dtype, [self.warmup_bucket], config)
        )
        with self.startup.phase("compile_cache_load"):
            self.startup.compile_cache = "hit" if cache.load() else "miss"
        with self.startup.phase("compile_warmup"):
            model.compile_transformer(self.pipe.transformer)
            self.compiled = True
            if warm_up:
                self.warm_up()
        if warm_up and self.startup.compile_cache == "miss":
            with self.startup.phase("compile_cache_save"):
                cache.save()

    @property
    def warmup_bucket(self) -> tuple[int, int]:
        """(width, height) compiled at load: the landscape tile every large output is cut into."""
        return tile_shapes(self.max_pass_area, self.size_multiple)[0]

    def warm_up(self) -> None:
        """Compile every graph variant of the default shape bucket now — the stack's ranks
        (0, the default request, and each rank bucket) — so no request pays for compilation.

        Each variant runs one denoising step through the pipeline (the request's own call, so
        the graph is guarded on exactly what a request passes) and stops at the latents: the
        VAE decode compiles nothing, and at 2048×1152 it and a second step cost seconds per
        variant of every start."""
        width, height = self.warmup_bucket
        guide = Image.new("RGB", (width, height), (128, 128, 128))
        job = EngineJob(width=width, height=height, seed=0, num_inference_steps=WARMUP_STEPS)
        with self._lock:
            for rank in self.adapters.variants:
                started = time.perf_counter()
                with self.adapters.variant(rank):
                    self.pipe(**self._pipe_arguments(guide, job, None), output_type="latent")
                log.info(
                    "chronoedit warm-up bucket=%dx%d rank=%d seconds=%.1f",
                    width,
                    height,
                    rank,
                    time.perf_counter() - started,
                )

    def _render(
        self,
        guide: Image.Image,
        job: EngineJob,
        generator: torch.Generator | None,
        on_step: ProgressFn | None = None,
        step_offset: int = 0,
        total_steps: int = 0,
    ) -> torch.Tensor:
        """One diffusion pass over ``guide`` (already at the pass's size): the last frame,
        (h, w, 3) float32 in [0, 1], still on the device — the pipeline's own ``np`` output
        would copy all five frames to the host and convert them there."""

        def step_end(_pipe, step: int, _timestep, _tensors) -> dict:
            # an exception raised here (a cancelled job) propagates out of the pipeline call
            if on_step is not None:
                on_step(step_offset + step + 1, total_steps, "step")
            return {}

        output = self.pipe(
            **self._pipe_arguments(guide, job, generator),
            output_type="pt",
            callback_on_step_end=step_end,
        )
        # frames: (batch, 5, 3, h, w); the last of the 5 frames is the upscaled image
        return output.frames[0, -1].permute(1, 2, 0).float()

    def _pipe_arguments(
        self, guide: Image.Image, job: EngineJob, generator: torch.Generator | None
    ) -> dict[str, Any]:
        """The pipeline call of one pass over ``guide``, but for its output."""
        return {
            "image": guide,
            "prompt_embeds": self.embeddings.positive,
            "negative_prompt_embeds": self.embeddings.negative,
            "height": guide.height,
            "width": guide.width,
            "num_frames": model.NUM_FRAMES,
            "num_inference_steps": job.num_inference_steps,
            "guidance_scale": job.guidance_scale,  # CFG (a second pass per step) only when > 1
            "generator": generator,
            "max_sequence_length": model.MAX_SEQUENCE_LENGTH,
        }

    def plan(self, job: EngineJob) -> list[PassTile]:
        """The passes a job needs: one, or overlapping tiles when above ``max_pass_area``."""
        return plan_pass_tiles(
            job.width, job.height, self.max_pass_area, self.tile_overlap, self.size_multiple
        )

    def upscale(
        self, image: Image.Image, job: EngineJob, progress: ProgressFn | None = None
    ) -> Image.Image:
        """Upscale to exactly ``job.width`` × ``job.height`` (multiples of 16).

        ``progress(done, total, "step")`` is called after every denoising step, counted over
        the whole job: ``total`` = steps × tiles. An exception it raises stops the job.
        The request's ``loras`` are loaded and checked first (``progress(i, n, "lora")``), and
        swapped into the slots only once all of them are good.
        """
        if job.width % self.size_multiple or job.height % self.size_multiple:
            raise ValueError(f"output {job.width}x{job.height} is not a multiple of 16")
        started = time.perf_counter()
        if job.loras and self.loras is None:
            raise feature_not_supported(
                "This deployment runs without request-LoRA slots (--lora-slots 0).",
                ("body", "loras"),
            )
        prepared = self.loras.prepare(job.loras, progress) if self.loras and job.loras else []
        lora_seconds = time.perf_counter() - started
        guide = to_rgb(image).resize((job.width, job.height), GUIDE_FILTER)
        tiles = self.plan(job)
        total = job.num_inference_steps * len(tiles)
        # one CPU generator per request: the same seed gives the same noise on any device
        generator = torch.Generator("cpu").manual_seed(job.seed)
        with self._lock:
            graphs = model.compiled_graphs()
            swap_started = time.perf_counter()
            self.adapters.apply(job.lora_scale, prepared)
            swap_seconds = time.perf_counter() - swap_started
            if len(tiles) == 1:
                pixels = self._render(guide, job, generator, progress, 0, total)
            else:
                rendered = 0

                def render(tile: PassTile) -> np.ndarray:
                    nonlocal rendered
                    box = (tile.x0, tile.y0, tile.x1, tile.y1)
                    offset = rendered * job.num_inference_steps
                    rendered += 1
                    frame = self._render(guide.crop(box), job, generator, progress, offset, total)
                    return frame.cpu().numpy()

                pixels = torch.from_numpy(blend_tiles(job.width, job.height, tiles, render))
            # bytes made on the device: one byte a channel leaves it
            result = Image.fromarray(to_uint8(pixels).cpu().numpy())
            new_graphs = model.compiled_graphs() - graphs
            safety = self._check(result, job)
        if new_graphs and self.compiled:
            self._compiled_late(new_graphs, tiles, time.perf_counter() - started)
        if safety == "flagged":
            result = blacked_out(result)
            result.info[SAFETY_FLAGGED_KEY] = True  # the journey counts it per request
        log.info(
            "chronoedit upscale width=%d height=%d tiles=%d steps=%d guidance=%g cfg=%s "
            "lora_scale=%g loras=%s rank=%d lora_load_ms=%.1f lora_swap_ms=%.1f seed=%d safety=%s "
            "new_graphs=%d render_ms=%.1f",
            job.width,
            job.height,
            len(tiles),
            job.num_inference_steps,
            job.guidance_scale,
            job.guidance_scale > 1,
            job.lora_scale,
            ",".join(f"{lora.label}:{scale:g}" for lora, scale in prepared) or "-",
            self.adapters.rank,
            lora_seconds * 1000,
            swap_seconds * 1000,
            job.seed,
            safety,
            new_graphs,
            (time.perf_counter() - started) * 1000,
        )
        return result

    def _compiled_late(self, graphs: int, tiles: list[PassTile], seconds: float) -> None:
        """A request compiled graphs after the warm-up: say which pass shape, and count it."""
        shapes = sorted({(tile.x1 - tile.x0, tile.y1 - tile.y0) for tile in tiles})
        metrics.COMPILED_GRAPHS.labels(self.name).inc(graphs)
        log.warning(
            "chronoedit compiled graphs=%d while serving pass_shapes=%s rank=%d seconds=%.1f "
            "warm_bucket=%dx%d: the first pass of this shape and graph variant pays for its "
            "compilation, later ones are warm",
            graphs,
            ",".join(f"{width}x{height}" for width, height in shapes),
            self.adapters.rank,
            seconds,
            *self.warmup_bucket,
        )

    def _check(self, image: Image.Image, job: EngineJob) -> str:
        """``off`` (not asked), ``unavailable`` (asked, no checker), ``passed`` or ``flagged``."""
        if not job.enable_safety_checker:
            return "off"
        if self.safety_checker is None:
            return "unavailable"
        if not self.safety_checker.check(image):
            return "passed"
        self.safety_flagged += 1
        log.warning(
            "chronoedit safety_checker flagged=1 action=blacked_out width=%d height=%d seed=%d "
            "flagged_total=%d",
            image.width,
            image.height,
            job.seed,
            self.safety_flagged,
        )
        return "flagged"

    def metadata(self) -> dict[str, object]:
        """What is loaded and how it runs; ``safety_checker`` is None when nothing checks."""
        return {
            **super().metadata(),
            "prompt": self.prompt,
            "model_dir": str(self.model_dir),
            "upscaler_lora": str(self.upscaler_lora),
            "distill_lora": str(self.distill_lora) if self.distill_lora else None,
            "flow_shift": self.flow_shift,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "max_pass_area": self.max_pass_area,
            "tile_overlap": self.tile_overlap,
            "compiled": self.compiled,
            "precision": self.precision,
            "graph_variants": list(self.adapters.variants),
            "safety_checker": self.safety_checker.source if self.safety_checker else None,
            "loras": describe_loras(self.lora_settings, self.loras),
        }

    @property
    def loras_catalog(self) -> list[str]:
        """The names a request may use from the deployment's LoRA catalog (GET /info)."""
        return self.loras.catalog_names if self.loras is not None else []

    def close(self) -> None:
        """Drop the pipeline and free GPU memory (the engine is unusable afterwards)."""
        self.pipe = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
