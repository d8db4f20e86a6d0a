"""The one interface every upscaling engine implements.

Engines see a decoded RGB image and validated, HTTP-free parameters; they know nothing about
requests, URLs or encodings. The request journey (``predictor.journey``) does the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

#: ``progress(done, total, unit)``: ``unit`` is "tile" for the sr engine, "step" for diffusion.
ProgressFn = Callable[[int, int, str], None]
#: an engine whose safety checker replaced its output sets ``image.info[SAFETY_FLAGGED_KEY]``
SAFETY_FLAGGED_KEY = "upscaler.safety_flagged"


@dataclass(frozen=True)
class LoraRequest:
    """One extra LoRA asked for by a request (only engines with ``supports_loras`` accept any)."""

    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class EngineJob:
    """What an engine must produce: the exact output size plus the sampling parameters."""

    width: int
    height: int
    seed: int
    num_inference_steps: int = 30
    guidance_scale: float = 1.0
    lora_scale: float = 1.0
    #: engines with a safety checker run it when this is true (the request's field)
    enable_safety_checker: bool = True
    loras: tuple[LoraRequest, ...] = field(default_factory=tuple)


class Engine(ABC):
    """An upscaler. Subclasses set the class attributes and implement :meth:`upscale`."""

    #: short name used on the command line and in metrics labels
    name: str = "engine"
    #: echoed in the response's ``prompt`` (empty for engines without one)
    prompt: str = ""
    #: output width and height are rounded to a multiple of this (16 for latent-space models)
    size_multiple: int = 1
    #: whether request-level extra ``loras`` can be honoured
    supports_loras: bool = False

    @abstractmethod
    def upscale(
        self, image: Image.Image, job: EngineJob, progress: ProgressFn | None = None
    ) -> Image.Image:
        """Return ``image`` (RGB) upscaled to exactly ``job.width`` × ``job.height``."""

    def metadata(self) -> dict[str, object]:
        """What the engine is and can do, shown in the model's metadata (override to add)."""
        return {"engine": self.name, "supports_loras": self.supports_loras}

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to release
        """Release resources held by the engine (GPU memory, threads)."""
