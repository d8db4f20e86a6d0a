"""Helpers shared by the chronoedit tests: a seam metric and image decoding."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from predictor.engines.blend import PassTile


def seam_lines(tiles: Sequence[PassTile]) -> tuple[list[int], list[int]]:
    """Columns and rows where a tile starts over a neighbour (where butted tiles would meet)."""
    columns = sorted({tile.x0 for tile in tiles if tile.left})
    rows = sorted({tile.y0 for tile in tiles if tile.top})
    return columns, rows


def seam_ratio(
    image: Image.Image | np.ndarray, tiles: Sequence[PassTile], margin: int = 3
) -> float:
    """Mean |gradient| across the seam lines ÷ mean |gradient| across all other lines.

    ≈1 when seams are invisible; a visible seam (a step or a tile-border artefact exactly on the
    line) makes it several times larger. Lines within ``margin`` of a seam or of the image edge
    are left out of the reference, so the ramps of a blend are not counted as "elsewhere".
    """
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    columns, rows = seam_lines(tiles)
    across_x = np.abs(np.diff(pixels, axis=1))  # [:, i] is the step between columns i and i+1
    across_y = np.abs(np.diff(pixels, axis=0))
    seam_values, other_values = [], []
    for steps, seams in ((across_x, columns), (across_y, rows)):
        lines = steps.shape[1] if steps is across_x else steps.shape[0]
        seam_set = {seam - 1 for seam in seams}  # the step into the seam's first pixel
        for line in range(lines):
            values = steps[:, line] if steps is across_x else steps[line, :]
            if line in seam_set:
                seam_values.append(values.mean())
            elif margin <= line < lines - margin and all(
                abs(line - seam) > margin for seam in seam_set
            ):
                other_values.append(values.mean())
    assert seam_values and other_values, "no seams to measure"
    return float(np.mean(seam_values) / np.mean(other_values))


def decode_data_uri(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,"), url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    image.load()
    return image
