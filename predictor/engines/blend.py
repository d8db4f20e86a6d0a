"""Output-space tiles for diffusion passes, and seam blending with feathered weights.

A diffusion pass costs memory and time super-linearly in its area, and NVIDIA tests the upscaler
only up to ~2K, so a large output is rendered as overlapping tiles of at most ``max_area``
pixels. Unlike :mod:`.tiling` (deterministic CNNs, where cropping the overlap is exact), each
diffusion tile invents its own detail and drifts a little in colour, so cropping would leave a
visible step at every seam. Instead neighbouring tiles are cross-faded over their whole overlap
with raised-cosine weights that sum to one, which turns the step into a gentle ramp.

Tile sizes come from a few fixed shapes (16:9, 9:16, square at ``max_area``) so that a compiled
transformer sees few distinct shapes ("shape buckets") however large the images get.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: output pixels per diffusion pass above which an output is tiled (NVIDIA tests up to ~2K)
DEFAULT_MAX_PASS_AREA = 2048 * 1152
#: diffusion passes need sides that are multiples of this (VAE ×8, transformer patch ×2)
SIZE_MULTIPLE = 16
#: most overlap between neighbouring tiles, in output pixels (enough to hide a colour drift)
MAX_OVERLAP = 128


@dataclass(frozen=True)
class PassTile:
    """One diffusion pass: the output box ``[x0, x1) × [y0, y1)`` and its feather lengths.

    ``left``/``top``/``right``/``bottom`` are how many pixels on that side are shared with a
    neighbour (0 at the image border): the tile's weight ramps up over exactly that width.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _floor_to(value: float, multiple: int) -> int:
    return int(value // multiple) * multiple


def default_overlap(max_area: int) -> int:
    """A quarter of a square tile's side, multiple of 8, between 8 and :data:`MAX_OVERLAP`."""
    return min(MAX_OVERLAP, max(8, _floor_to(math.sqrt(max_area) / 4, 8)))


def tile_shapes(max_area: int, multiple: int = SIZE_MULTIPLE) -> list[tuple[int, int]]:
    """The candidate (width, height) tile shapes for ``max_area``: 16:9, 9:16 and square.

    With the default 2048×1152 area these are 2048×1152, 1152×2048 and 1536×1536.
    """
    long = _floor_to(math.sqrt(max_area * 16 / 9), multiple)
    short = _floor_to(max_area / long, multiple) if long else 0
    side = _floor_to(math.sqrt(max_area), multiple)
    shapes = [(long, short), (short, long), (side, side)]
    return [shape for shape in dict.fromkeys(shapes) if min(shape) >= multiple]


def _axis(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of ``size`` covering ``[0, length)``, evenly spread, each overlap ≥ ``overlap``."""
    if size >= length:
        return [(0, length)]
    count = math.ceil((length - overlap) / (size - overlap))
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(start, start + size) for start in starts]


def _fit(length: int, other: int, size: int, max_area: int, multiple: int) -> int:
    """Grow a tile side when the other side is clamped to the image (a thin strip of tiles)."""
    return min(length, max(size, _floor_to(max_area / other, multiple)))


def plan_pass_tiles(
    width: int,
    height: int,
    max_area: int,
    overlap: int | None = None,
    multiple: int = SIZE_MULTIPLE,
) -> list[PassTile]:
    """Cover a ``width``×``height`` output with the fewest passes of at most ``max_area`` pixels.

    Output sides must be multiples of ``multiple`` (so is every tile side). One pass when the
    whole output fits; otherwise the candidate shape of :func:`tile_shapes` needing the fewest
    tiles (then the fewest rendered pixels) wins. Tiles are row-major.
    """
    if width % multiple or height % multiple or width < multiple or height < multiple:
        raise ValueError(
            f"output {width}x{height} must have sides that are multiples of {multiple}"
        )
    if max_area < (2 * multiple) ** 2:
        raise ValueError(f"max_area must be at least {(2 * multiple) ** 2} pixels, got {max_area}")
    if width * height <= max_area:
        return [PassTile(0, 0, width, height)]
    overlap = default_overlap(max_area) if overlap is None else overlap
    best: tuple[tuple[int, int], list[tuple[int, int]], list[tuple[int, int]]] | None = None
    for tile_w, tile_h in tile_shapes(max_area, multiple):
        tile_w, tile_h = min(tile_w, width), min(tile_h, height)
        if tile_w == width:
            tile_h = _fit(height, tile_w, tile_h, max_area, multiple)
        elif tile_h == height:
            tile_w = _fit(width, tile_h, tile_w, max_area, multiple)
        if min(tile_w, tile_h) <= overlap and (tile_w < width or tile_h < height):
            continue  # this shape cannot advance past its own overlap
        xs, ys = _axis(width, tile_w, overlap), _axis(height, tile_h, overlap)
        cost = (len(xs) * len(ys), len(xs) * len(ys) * tile_w * tile_h)
        if best is None or cost < best[0]:
            best = (cost, xs, ys)
    if best is None:
        raise ValueError(f"overlap {overlap} is too large for tiles of {max_area} pixels")
    _, xs, ys = best
    return [
        PassTile(
            x0,
            y0,
            x1,
            y1,
            left=xs[i - 1][1] - x0 if i else 0,
            top=ys[j - 1][1] - y0 if j else 0,
            right=x1 - xs[i + 1][0] if i + 1 < len(xs) else 0,
            bottom=y1 - ys[j + 1][0] if j + 1 < len(ys) else 0,
        )
        for j, (y0, y1) in enumerate(ys)
        for i, (x0, x1) in enumerate(xs)
    ]


def _ramp(t: np.ndarray) -> np.ndarray:
    """Raised cosine from 0 to 1: ``ramp(t) + ramp(1 - t) == 1``, flat at both ends (no kink)."""
    return 0.5 - 0.5 * np.cos(np.pi * t)


def feather_1d(size: int, before: int, after: int) -> np.ndarray:
    """Weights along one axis of a tile: ramp up over ``before`` pixels, down over ``after``."""
    weights = np.ones(size, dtype=np.float64)
    position = np.arange(size, dtype=np.float64) + 0.5  # pixel centres
    if before:
        head = position < before
        weights[head] *= _ramp(position[head] / before)
    if after:
        tail = position > size - after
        weights[tail] *= _ramp((size - position[tail]) / after)
    return weights


def feather_weights(tile: PassTile) -> np.ndarray:
    """The tile's (height, width) blending weights: the product of its two axes' feathers."""
    return np.outer(
        feather_1d(tile.height, tile.top, tile.bottom),
        feather_1d(tile.width, tile.left, tile.right),
    )


RenderFn = Callable[[PassTile], np.ndarray]


def blend_tiles(
    width: int, height: int, tiles: Sequence[PassTile], render: RenderFn, feather: bool = True
) -> np.ndarray:
    """Render every tile and cross-fade the overlaps; returns (height, width, C) float32.

    ``render(tile)`` returns the tile's pixels as a (tile.height, tile.width, C) array.
    ``feather=False`` butts the tiles together instead (each pixel from the last tile covering
    it): only for tests, which show why it must not be used.
    """
    # float32 accumulators: a 16 MP output needs ~250 MB here, and at most four tiles overlap
    total: np.ndarray | None = None
    weight_sum = np.zeros((height, width, 1), dtype=np.float32)
    for tile in tiles:
        pixels = np.asarray(render(tile), dtype=np.float32)
        if pixels.shape[:2] != (tile.height, tile.width):
            raise ValueError(
                f"tile render gave {pixels.shape[:2]}, expected {tile.height, tile.width}"
            )
        if total is None:
            total = np.zeros((height, width, pixels.shape[2]), dtype=np.float32)
        box = (slice(tile.y0, tile.y1), slice(tile.x0, tile.x1))
        if feather:
            weights = feather_weights(tile)[..., None].astype(np.float32)
            total[box] += pixels * weights
            weight_sum[box] += weights
        else:
            total[box] = pixels
            weight_sum[box] = 1.0
    if total is None:
        raise ValueError("no tiles to blend")
    if np.any(weight_sum <= 0):
        raise ValueError("tiles do not cover the output")
    return total / weight_sum
