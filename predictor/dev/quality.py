"""Fidelity numbers shared by the tests and the benchmark, so both report the same thing.

The protocol: shrink a photo ×``factor`` with antialiased bicubic (what Pillow's
``resize(..., BICUBIC)`` does when shrinking), upscale it back with the engine and with plain
bicubic, and compare each to the original with PSNR on 8-bit RGB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: ``upscale(image, width, height)`` -> image of that size
UpscaleFn = Callable[[Image.Image, int, int], Image.Image]


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float64)


def psnr(
    reference: Image.Image | np.ndarray,
    candidate: Image.Image | np.ndarray,
    max_value: float = 255.0,
) -> float:
    """PSNR in dB over all pixels and channels, on the common top-left crop of both images.

    Cropping (rather than raising) lets odd-sized originals be compared with ×2 round trips that
    lose the last row/column. Identical images give ``inf``.
    """
    ref, cand = _as_array(reference), _as_array(candidate)
    if ref.ndim != cand.ndim or ref.shape[2:] != cand.shape[2:]:
        raise ValueError(f"incompatible shapes {ref.shape} and {cand.shape}")
    h, w = min(ref.shape[0], cand.shape[0]), min(ref.shape[1], cand.shape[1])
    mse = float(np.mean((ref[:h, :w] - cand[:h, :w]) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(max_value**2 / mse)


@dataclass(frozen=True)
class RoundTrip:
    """PSNR (dB) of the engine and of plain bicubic after a downscale/upscale round trip."""

    model_db: float
    bicubic_db: float

    @property
    def gain_db(self) -> float:
        """How much the engine beats bicubic (positive = better)."""
        return self.model_db - self.bicubic_db


def roundtrip_psnr(original: Image.Image, upscale: UpscaleFn, factor: int = 2) -> RoundTrip:
    """Shrink ``original`` by ``factor`` (antialiased bicubic), upscale back, score both ways."""
    original = original.convert("RGB")
    small_w, small_h = original.width // factor, original.height // factor
    if small_w < 1 or small_h < 1:
        raise ValueError(f"{original.size} is too small for a x{factor} round trip")
    small = original.resize((small_w, small_h), Image.BICUBIC)
    size = (small_w * factor, small_h * factor)
    model = upscale(small, *size)
    if model.size != size:
        raise ValueError(f"upscaler returned {model.size}, expected {size}")
    bicubic = small.resize(size, Image.BICUBIC)
    return RoundTrip(psnr(original, model), psnr(original, bicubic))
