"""Pluggable output safety checks: a tiny protocol, and diffusers' CLIP-based checker.

An engine runs its checker on the final image when the request's ``enable_safety_checker`` is
true; a flagged image is replaced by black. With no checker configured nothing is claimed: the
engine says so at start-up and in its metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .chronoedit.model import resolve_local_dir

log = logging.getLogger("predictor.engines.safety")


@runtime_checkable
class SafetyChecker(Protocol):
    """Anything that can tell whether an image must not be returned."""

    #: where the checker came from (shown in the engine's metadata)
    source: str

    def check(self, image: Image.Image) -> bool:
        """True when ``image`` is flagged (must be withheld)."""
        ...


def blacked_out(image: Image.Image) -> Image.Image:
    """What a flagged image is replaced by: black, same size and mode."""
    return Image.new(image.mode, image.size)


class DiffusersSafetyChecker:
    """``StableDiffusionSafetyChecker`` (CLIP ViT-L/14 + concept embeddings) from a directory.

    ``directory`` is either the checker's own repository layout (``config.json``, weights and
    ``preprocessor_config.json`` together, as in ``CompVis/stable-diffusion-safety-checker``)
    or a Stable Diffusion pipeline with ``safety_checker/`` and ``feature_extractor/``.
    A repository id is looked up in the local Hugging Face cache only.
    """

    def __init__(self, directory: str | Path, device: torch.device | str = "cpu") -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        root = resolve_local_dir(directory)
        model_dir, processor_dir = root, root
        if (root / "safety_checker").is_dir():
            model_dir = root / "safety_checker"
            if (root / "feature_extractor").is_dir():
                processor_dir = root / "feature_extractor"
        self.source = str(directory)
        self.device = torch.device(device)
        self.processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)
        self.model = StableDiffusionSafetyChecker.from_pretrained(
            model_dir, local_files_only=True
        ).to(self.device)
        self.model.eval().requires_grad_(False)
        self.dtype = next(self.model.parameters()).dtype

    def check(self, image: Image.Image) -> bool:
        """Run the checker on one RGB image."""
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        # the checker blacks out its ``images`` argument itself; we only want the verdict, so
        # it gets a 1-pixel placeholder instead of a copy of a possibly 16-megapixel image
        placeholder = np.zeros((1, 1, 1, 3), dtype=np.float32)
        with torch.no_grad():
            _, flagged = self.model(
                clip_input=pixels.to(self.device, self.dtype), images=placeholder
            )
        return bool(flagged[0])
