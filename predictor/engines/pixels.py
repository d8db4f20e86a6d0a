"""Float pixels to bytes, the one conversion every engine's output goes through."""

from __future__ import annotations

import torch


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any layout) to uint8, rounded half to even, on their own device."""
    return pixels.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
