"""Plan the output: its exact size from the input size, the factor and the engine's grid."""

from __future__ import annotations

import secrets

from predictor.codec import MAX_SIDE
from predictor.errors import image_too_large
from predictor.schema import MAX_SEED, OutputFormat


def plan_output_size(
    width: int,
    height: int,
    factor: float,
    multiple: int = 1,
    max_pixels: int | None = None,
    output_format: OutputFormat | None = None,
) -> tuple[int, int]:
    """``(width, height) × factor``, each side rounded to ``multiple``, aspect ratio kept.

    Raises a 413 naming the planned size when it exceeds ``max_pixels`` or the side the
    ``output_format``'s encoder can write, so no engine time is spent on an output that cannot
    be delivered.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")

    def side(length: int) -> int:
        return max(multiple, round(length * factor / multiple) * multiple)

    out_w, out_h = side(width), side(height)
    if max_pixels is not None and out_w * out_h > max_pixels:
        raise image_too_large(
            f"{width}×{height} × {factor:g} gives {out_w}×{out_h} = {out_w * out_h} pixels; "
            f"the output limit is {max_pixels}. Use a smaller image or upscale_factor.",
            ("body", "upscale_factor"),
            max_output_pixels=max_pixels,
        )
    if output_format is not None and max(out_w, out_h) > MAX_SIDE[output_format]:
        limit = MAX_SIDE[output_format]
        others = [f.value for f, side in MAX_SIDE.items() if side >= max(out_w, out_h)]
        instead = f"output_format {' or '.join(others)}" if others else "a smaller image"
        raise image_too_large(
            f"{width}×{height} × {factor:g} gives {out_w}×{out_h}; {output_format.value} holds at "
            f"most {limit} pixels per side. Use {instead}, or a smaller upscale_factor.",
            ("body", "output_format"),
            max_side=limit,
            output_format=output_format.value,
        )
    return out_w, out_h


def resolve_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one (echoed back so the result can be reproduced)."""
    if seed is not None:
        return seed
    return secrets.randbelow(min(MAX_SEED, 2**53))  # stays exact in JavaScript clients
