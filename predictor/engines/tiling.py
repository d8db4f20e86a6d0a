"""Overlapping-tile planning and crop-the-overlap stitching for image-to-image networks.

Running a network on a whole large image makes peak memory grow with the image (Real-ESRGAN
needs ~1.2 GB for a 256² input). Instead each output tile is computed from its input tile plus
``context`` pixels of real neighbourhood on every side, and only the tile's own region of the
result is kept. When ``context`` covers the network's receptive field the stitched image equals
the untiled one (waifu2x); otherwise the difference shrinks as context grows (Real-ESRGAN).
Nothing here knows about a particular model: the scale factor is a parameter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import ProgressFn

TileFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Tile:
    """One tile: the region it owns, ``[y0, y1) × [x0, x1)`` in input pixels."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        """Rows owned by this tile."""
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        """Columns owned by this tile."""
        return self.x1 - self.x0


def _split(length: int, tile_size: int) -> list[tuple[int, int]]:
    """Cut ``length`` into the fewest near-equal spans of at most ``tile_size``.

    Even spans (instead of full tiles plus a sliver) keep every tile's cost similar.
    """
    count = -(-length // tile_size)
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def plan_tiles(height: int, width: int, tile_size: int) -> list[Tile]:
    """Partition an image into non-overlapping owned regions, row-major.

    The overlap is added when tiles are read (see :func:`upscale_tiled`), so owned regions
    tile the image exactly and each output pixel is written once.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty image ({width}x{height})")
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    return [
        Tile(y0, y1, x0, x1)
        for y0, y1 in _split(height, tile_size)
        for x0, x1 in _split(width, tile_size)
    ]


def count_tiles(height: int, width: int, tile_size: int) -> int:
    """How many tiles :func:`plan_tiles` produces, to report progress across several passes."""
    return -(-height // tile_size) * -(-width // tile_size)


def upscale_tiled(
    image: torch.Tensor,
    fn: TileFn,
    *,
    scale: int,
    tile_size: int,
    context: int,
    trim: int = 0,
    progress: ProgressFn | None = None,
    postprocess: TileFn | None = None,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile and stitch the results.

    ``image`` is (N, C, H, W). ``fn`` maps an (N, C, h, w) window to
    (N, C', scale·(h − 2·trim), scale·(w − 2·trim)): ``trim`` is the number of input pixels per
    side a "valid"-convolution network eats (0 for size-preserving networks). Every window is its
    tile plus ``context ≥ trim`` pixels per side; at the image border that context is made by
    edge replication, so border and interior tiles are treated alike and one tile covering the
    whole image is the untiled result. ``postprocess`` (e.g. clamp and quantise) runs on each
    kept tile before it is written, so the full-size buffer can have a compact dtype.
    ``progress(done, total, "tile")`` is called after each tile.
    """
    if context < trim:
        raise ValueError(f"context ({context}) must cover the network's trim ({trim})")
    _, _, height, width = image.shape
    padded = F.pad(image, [context] * 4, mode="replicate") if context else image
    tiles = plan_tiles(height, width, tile_size)
    crop = (context - trim) * scale  # output pixels per side that belong to the context
    out: torch.Tensor | None = None
    for done, tile in enumerate(tiles, start=1):
        window = padded[..., tile.y0 : tile.y1 + 2 * context, tile.x0 : tile.x1 + 2 * context]
        result = fn(window.contiguous())
        expected = (
            scale * (tile.height + 2 * (context - trim)),
            scale * (tile.width + 2 * (context - trim)),
        )
        if tuple(result.shape[-2:]) != expected:
            raise ValueError(f"tile fn returned {tuple(result.shape[-2:])}, expected {expected}")
        kept = result[..., crop : crop + scale * tile.height, crop : crop + scale * tile.width]
        if postprocess is not None:
            kept = postprocess(kept)
        if out is None:
            shape = (*result.shape[:2], scale * height, scale * width)
            out = torch.empty(shape, dtype=kept.dtype, device=kept.device)
        out[..., scale * tile.y0 : scale * tile.y1, scale * tile.x0 : scale * tile.x1] = kept
        if progress is not None:
            progress(done, len(tiles), "tile")
    assert out is not None  # plan_tiles never returns an empty plan
    return out
