"""Start-up of the chronoedit engine: weights straight to the device, the prompt from its cache.

Each component is read from its safetensors files directly onto the device in its serving
dtype (``device_map``), one after another, so host memory holds at most a shard's worth of
tensors on their way and never the whole 14B pipeline; the old path built the pipeline on the
CPU and then copied it to the GPU (twice the model in host RAM). Nothing is downloaded
(``local_files_only``).

The fixed prompt's embeddings come from :mod:`.prompt_cache` when a valid file exists; only on
a miss are the tokenizer and UMT5 loaded, used once, freed (before the transformer arrives, so
the two never share GPU memory) and the result saved for the next start.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from . import model
from .prompt_cache import (
    CachedPrompt,
    PromptCache,
    cache_directories,
    cache_key,
    encoder_identity,
)

if TYPE_CHECKING:
    from diffusers import ChronoEditPipeline

log = logging.getLogger("predictor.engines.chronoedit")

#: where caches go when --cache-dir is not given
CACHE_DIR_ENV = "CHRONO_UPSCALER_CACHE_DIR"
T = TypeVar("T")


class StartupError(RuntimeError):
    """A component could not be loaded; the message names the file at fault."""


def default_cache_dir() -> Path:
    """``$CHRONO_UPSCALER_CACHE_DIR``, else ``~/.cache/chrono-upscaler`` (the temporary
    directory's when there is no home, as for some container users)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    try:
        home = Path.home()
    except RuntimeError:
        home = Path(tempfile.gettempdir())
    return home / ".cache" / "chrono-upscaler"


@dataclass
class StartupReport:
    """What a start did and how long each phase took (logged, and read by the start-up bench)."""

    phases: dict[str, float] = field(default_factory=dict)
    #: ``hit`` (read from the cache file) or ``miss`` (UMT5 loaded and run)
    embeddings: str = "miss"
    prompt_cache_path: str | None = None
    #: ``off``, ``hit`` (artifacts hot-loaded) or ``miss``
    compile_cache: str = "off"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - started, 3)


def check_weight_files(directory: Path) -> None:
    """Raise :class:`StartupError` naming the first safetensors file whose header is unreadable."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise StartupError(
                f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                f"{str(exc)[:160]}); the download or the volume is damaged"
            ) from None


#: transformers' switch for kernels fetched from the Hugging Face Hub at load
HUB_KERNELS_ENV = "USE_HUB_KERNELS"


def no_hub_kernels() -> None:
    """Keep transformers from fetching CUDA kernels from the Hub while it loads UMT5.

    With the ``kernels`` package installed (a dependency of transformers 5), loading a model
    onto a CUDA device asks the Hub for an activation kernel — a download at start-up, which an
    offline node refuses: on an H200 the text encoder failed to load with "could not verify
    publisher trust status". Nothing is downloaded at start, so it is off unless the operator of
    the node set ``USE_HUB_KERNELS`` itself.
    """
    os.environ.setdefault(HUB_KERNELS_ENV, "NO")


def load_component(directory: Path, load: Callable[[], T], what: str) -> T:
    """``load()``, with a failure turned into an error that names the damaged file."""
    try:
        return load()
    except Exception as exc:
        check_weight_files(directory)  # raises naming the file when one is unreadable
        raise StartupError(f"the {what} in {directory} could not be loaded: {exc}") from exc


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def encode_fixed_prompt(
    model_dir: Path, dtype: torch.dtype, device: torch.device
) -> model.PromptEmbeddings:
    """Load the tokenizer and UMT5 to ``device``, encode the fixed prompt and its empty
    negative, and drop both again."""
    from diffusers import ChronoEditPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, subfolder="tokenizer", local_files_only=True
    )
    encoder_dir = model_dir / "text_encoder"
    encoder = load_component(
        encoder_dir,
        lambda: UMT5EncoderModel.from_pretrained(
            model_dir,
            subfolder="text_encoder",
            dtype=dtype,
            device_map=str(device),
            local_files_only=True,
        ),
        "text encoder",
    )
    # a pipeline holding only the text side: encode_prompt is the pipeline's own recipe
    shell = ChronoEditPipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        image_encoder=None,
        image_processor=None,
        transformer=None,
        vae=None,
        scheduler=None,
    )
    embeddings = _encode(shell, dtype, device)
    del shell, encoder, tokenizer
    _free(device)
    return embeddings


def _encode(
    pipe: ChronoEditPipeline, dtype: torch.dtype, device: torch.device
) -> model.PromptEmbeddings:
    """The fixed prompt and its empty negative, by the pipeline's own ``encode_prompt``."""
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(
            prompt=model.UPSCALER_PROMPT,
            negative_prompt=model.NEGATIVE_PROMPT,
            do_classifier_free_guidance=True,
            max_sequence_length=model.MAX_SEQUENCE_LENGTH,
            device=device,
            dtype=dtype,
        )
    assert negative is not None
    return model.PromptEmbeddings(positive, negative)


def adopt_pipeline(
    pipe: ChronoEditPipeline, device: torch.device
) -> tuple[ChronoEditPipeline, model.PromptEmbeddings]:
    """A pipeline built in memory (``make bench-gpu``'s full-size random model) instead of one
    read from disk: its text encoder encodes the fixed prompt once and is released."""
    if pipe.text_encoder is None:
        raise ValueError("the pipeline has no text_encoder")
    pipe.text_encoder.to(device)
    embeddings = _encode(pipe, pipe.transformer.dtype, device)
    pipe.text_encoder = None
    _free(device)
    return pipe.to(device), embeddings


def prompt_embeddings(
    model_dir: Path,
    dtype: torch.dtype,
    device: torch.device,
    cache_dir: Path,
    report: StartupReport,
) -> model.PromptEmbeddings:
    """The fixed prompt's embeddings: from the cache (beside the weights, else ``cache_dir``)
    when it matches this text encoder, tokenizer, prompt and dtype; else encoded and saved."""
    identity = encoder_identity(model_dir / "text_encoder", model_dir / "tokenizer")
    key = cache_key(
        model.UPSCALER_PROMPT,
        model.NEGATIVE_PROMPT,
        model.MAX_SEQUENCE_LENGTH,
        dtype,
        identity,
    )
    cache = PromptCache(cache_directories(model_dir, cache_dir))
    cached = cache.load(key, device)
    if cached is not None:
        report.embeddings = "hit"
        report.prompt_cache_path = str(cache.path_for(key))
        return model.PromptEmbeddings(cached.positive, cached.negative)
    report.embeddings = "miss"
    embeddings = encode_fixed_prompt(model_dir, dtype, device)
    saved = cache.save(
        key,
        CachedPrompt(embeddings.positive, embeddings.negative),
        {"prompt": model.UPSCALER_PROMPT, "dtype": str(dtype).removeprefix("torch.")},
    )
    report.prompt_cache_path = str(saved) if saved else None
    return embeddings


def load_pipeline(
    model_dir: Path,
    dtype: torch.dtype,
    device: torch.device,
    flow_shift: float,
    cache_dir: Path,
    report: StartupReport,
) -> tuple[ChronoEditPipeline, model.PromptEmbeddings]:
    """The pipeline on ``device`` without a text encoder, and the fixed prompt's embeddings.

    The image encoder stays in fp32 as in NVIDIA's examples; the scheduler is rebuilt as UniPC
    with flow sigmas and ``flow_shift`` (NVIDIA's recipe).
    """
    with report.phase("imports"):  # diffusers' and transformers' lazy modules: seconds
        from diffusers import (
            AutoencoderKLWan,
            ChronoEditPipeline,
            ChronoEditTransformer3DModel,
            UniPCMultistepScheduler,
        )
        from transformers import CLIPVisionModel

    no_hub_kernels()
    with report.phase("embeddings"):
        embeddings = prompt_embeddings(model_dir, dtype, device, cache_dir, report)

    def load(cls: Any, subfolder: str, what: str, weights: torch.dtype = dtype) -> Any:
        """One component from its safetensors straight onto the device (``device_map``)."""
        with report.phase(subfolder):
            return load_component(
                model_dir / subfolder,
                lambda: cls.from_pretrained(
                    model_dir,
                    subfolder=subfolder,
                    dtype=weights,
                    device_map=str(device),
                    local_files_only=True,
                ),
                what,
            )

    transformer = load(ChronoEditTransformer3DModel, "transformer", "transformer")
    vae = load(AutoencoderKLWan, "vae", "VAE")
    image_encoder = load(CLIPVisionModel, "image_encoder", "image encoder", torch.float32)
    with report.phase("pipeline"):
        pipe = ChronoEditPipeline.from_pretrained(
            model_dir,
            transformer=transformer,
            vae=vae,
            image_encoder=image_encoder,
            text_encoder=None,
            tokenizer=None,
            dtype=dtype,
            local_files_only=True,
        )
        pipe.scheduler = UniPCMultistepScheduler.from_config(
            pipe.scheduler.config,
            flow_shift=flow_shift,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
        )
        pipe.set_progress_bar_config(disable=True)
    return pipe, embeddings
