"""Pure helpers of the chronoedit engine: pass tiles, feather weights, seams, output sizes."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.engines.blend import (
    DEFAULT_MAX_PASS_AREA,
    PassTile,
    blend_tiles,
    default_overlap,
    feather_1d,
    feather_weights,
    plan_pass_tiles,
    tile_shapes,
)
from predictor.plan import plan_output_size
from tests.predictor.chronoedit_helpers import seam_ratio


def _coverage(width: int, height: int, tiles: list[PassTile]) -> np.ndarray:
    counts = np.zeros((height, width), dtype=int)
    for tile in tiles:
        counts[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    return counts


def test_default_tile_shapes_are_the_2k_buckets() -> None:
    assert tile_shapes(DEFAULT_MAX_PASS_AREA) == [(2048, 1152), (1152, 2048), (1536, 1536)]
    assert default_overlap(DEFAULT_MAX_PASS_AREA) == 128
    assert default_overlap(1024) == 8


def test_output_within_the_area_is_one_pass() -> None:
    assert plan_pass_tiles(2048, 1152, DEFAULT_MAX_PASS_AREA) == [PassTile(0, 0, 2048, 1152)]
    assert plan_pass_tiles(64, 48, 4096) == [PassTile(0, 0, 64, 48)]


@pytest.mark.parametrize(
    ("width", "height", "max_area"),
    [
        (4000, 4000, DEFAULT_MAX_PASS_AREA),  # ×4 of a 1 MP photo
        (4096, 2304, DEFAULT_MAX_PASS_AREA),
        (1536, 4096, DEFAULT_MAX_PASS_AREA),  # portrait
        (8192, 640, DEFAULT_MAX_PASS_AREA),  # a panorama: one row of wider tiles
        (192, 128, 4096),
        (128, 96, 1024),
        (1024, 32, 1024),
    ],
)
def test_tiles_cover_the_output_within_the_area(width: int, height: int, max_area: int) -> None:
    overlap = default_overlap(max_area)
    tiles = plan_pass_tiles(width, height, max_area)
    assert len(tiles) > 1
    assert (_coverage(width, height, tiles) >= 1).all()
    for tile in tiles:
        assert tile.width * tile.height <= max_area
        assert tile.width % 16 == 0 and tile.height % 16 == 0
        assert 0 <= tile.x0 < tile.x1 <= width and 0 <= tile.y0 < tile.y1 <= height
        # a feather is exactly the overlap with the neighbour on that side, never less than asked
        for side in (tile.left, tile.top, tile.right, tile.bottom):
            assert side == 0 or side >= overlap
    # few shapes (compile buckets): every tile of one output has the same size
    assert len({(tile.width, tile.height) for tile in tiles}) == 1


def test_large_photo_uses_a_handful_of_2k_passes() -> None:
    tiles = plan_pass_tiles(4000, 4000, DEFAULT_MAX_PASS_AREA)
    assert len(tiles) == 9
    assert {(tile.width, tile.height) for tile in tiles} == {(1536, 1536)}


def test_feathers_match_neighbours() -> None:
    tiles = plan_pass_tiles(192, 128, 4096)
    by_origin = {(tile.x0, tile.y0): tile for tile in tiles}
    xs = sorted({tile.x0 for tile in tiles})
    ys = sorted({tile.y0 for tile in tiles})
    for tile in tiles:
        i, j = xs.index(tile.x0), ys.index(tile.y0)
        assert (tile.left == 0) == (i == 0) and (tile.top == 0) == (j == 0)
        assert (tile.right == 0) == (i == len(xs) - 1)
        assert (tile.bottom == 0) == (j == len(ys) - 1)
        if tile.right:
            assert tile.right == tile.x1 - by_origin[(xs[i + 1], tile.y0)].x0


def test_planning_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        plan_pass_tiles(100, 64, 4096)
    with pytest.raises(ValueError, match="at least"):
        plan_pass_tiles(64, 64, 512)


def test_feather_ramps_are_complementary() -> None:
    """Over an overlap the outgoing and incoming weights sum to one (no brightness change)."""
    overlap = 24
    outgoing = feather_1d(80, 0, overlap)[-overlap:]
    incoming = feather_1d(80, overlap, 0)[:overlap]
    np.testing.assert_allclose(outgoing + incoming, 1.0, atol=1e-12)
    assert np.all(np.diff(incoming) > 0) and incoming[0] < 0.01 and incoming[-1] > 0.99
    np.testing.assert_array_equal(feather_1d(80, 0, 0), 1.0)


def test_weights_form_a_partition_of_unity() -> None:
    tiles = plan_pass_tiles(192, 128, 4096)
    total = np.zeros((128, 192))
    for tile in tiles:
        total[tile.y0 : tile.y1, tile.x0 : tile.x1] += feather_weights(tile)
    assert total.min() > 0.5  # every pixel gets real weight: no dark corners to divide away
    constant = blend_tiles(192, 128, tiles, lambda t: np.full((t.height, t.width, 3), 0.25))
    np.testing.assert_allclose(constant, 0.25, atol=1e-6)


def _drifting_tiles(tiles: list[PassTile], image: np.ndarray):
    """Each tile renders the true image plus its own colour offset, the way diffusion tiles
    drift; that offset is exactly what shows as a seam when tiles are butted together."""
    offsets = np.random.default_rng(0).uniform(-0.08, 0.08, size=(len(tiles), 3))
    index = {tile: i for i, tile in enumerate(tiles)}

    def render(tile: PassTile) -> np.ndarray:
        return image[tile.y0 : tile.y1, tile.x0 : tile.x1] + offsets[index[tile]]

    return render


def test_blending_hides_seams_that_butting_shows() -> None:
    """The seam metric fails tiles butted together and passes the blend of the same tiles."""
    height, width = 128, 192
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = np.stack([0.5 + 0.3 * np.sin(3 * xx), 0.4 + 0.2 * yy, 0.3 + 0.2 * xx * yy], axis=-1)
    tiles = plan_pass_tiles(width, height, 4096)
    render = _drifting_tiles(tiles, smooth)
    butted = blend_tiles(width, height, tiles, render, feather=False)
    blended = blend_tiles(width, height, tiles, render)
    assert seam_ratio(butted, tiles) > 5
    assert seam_ratio(blended, tiles) < 1.5
    # and the blend stays faithful to the image under the drift (mean error ≤ the drift)
    assert np.abs(blended - smooth).mean() < 0.08


@pytest.mark.parametrize(
    ("size", "factor", "expected"),
    [
        ((32, 24), 2, (64, 48)),
        ((30, 20), 1.5, (48, 32)),  # 45×30 rounds to the 16 grid, aspect kept
        ((1000, 750), 4, (4000, 3008)),
        ((5, 5), 1, (16, 16)),  # never below one 16-pixel cell
    ],
)
def test_output_sizes_round_to_16(size, factor, expected) -> None:
    assert plan_output_size(*size, factor, 16) == expected
