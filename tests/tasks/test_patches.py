"""Patch helpers shared by patch-based tasks: the geometry scales the paper's, tiles are the crops their
corners name (written out by hand here), grayscale and standardization act per sample and per tile."""

from __future__ import annotations

import pytest
import torch

from selfsup.tasks.patches import (
    PuzzleGeometry,
    cut_tiles,
    draw_placement,
    standardize_tiles,
    tile_corners,
    to_grayscale,
)


def test_paper_geometry_and_its_scaled_versions() -> None:
    assert PuzzleGeometry.fit(225) == PuzzleGeometry(3, 75, 64)
    assert PuzzleGeometry.fit(225).window_size == 225
    assert PuzzleGeometry.fit(96) == PuzzleGeometry(3, 32, 27)
    assert PuzzleGeometry.fit(96, tile_size=28) == PuzzleGeometry(3, 32, 28)
    assert PuzzleGeometry(2, 10, 8).cell_origins().tolist() == [[0, 0], [0, 10], [10, 0], [10, 10]]
    with pytest.raises(ValueError, match="tile_size must be between"):
        PuzzleGeometry(3, 10, 11)
    with pytest.raises(ValueError, match=r"raise data\.image_size"):
        PuzzleGeometry(3, 75, 64).check(224)


def test_corners_follow_window_cell_and_offset() -> None:
    geometry = PuzzleGeometry(2, 10, 8)
    origins = torch.tensor([[1, 2]])
    offsets = torch.tensor([[[0, 0], [1, 2], [2, 1], [2, 2]]])
    order = torch.tensor([[3, 0, 2, 1]])  # position p shows cell order[p]
    corners = tile_corners(origins, offsets, order, geometry)
    assert corners.tolist() == [[[13, 14], [1, 2], [13, 3], [2, 14]]]


def test_placement_stays_inside_image_and_cell() -> None:
    geometry = PuzzleGeometry(3, 12, 9)
    generator = torch.Generator().manual_seed(0)
    origins, offsets = draw_placement(64, (41, 50), geometry, torch.device("cpu"), generator)
    assert origins.shape == (64, 2) and offsets.shape == (64, 9, 2)
    assert origins[:, 0].min() == 0 and origins[:, 0].max() == 41 - 36
    assert origins[:, 1].min() == 0 and origins[:, 1].max() == 50 - 36
    assert offsets.min() == 0 and offsets.max() == 12 - 9


def test_cut_tiles_are_the_crops_at_their_corners_with_shifts_clamped() -> None:
    images = torch.randn(2, 3, 20, 20)
    corners = torch.tensor([[[0, 0], [5, 7]], [[11, 11], [3, 0]]])
    tiles = cut_tiles(images, corners, tile_size=9)
    assert tiles.shape == (2, 2, 3, 9, 9)
    for b in range(2):
        for p in range(2):
            top, left = corners[b, p].tolist()
            assert torch.equal(tiles[b, p], images[b, :, top : top + 9, left : left + 9])
    shifts = torch.zeros(2, 2, 3, 2, dtype=torch.long)
    shifts[0, 1, 2] = torch.tensor([1, -2])  # one channel of one tile moves
    shifts[1, 0, 0] = torch.tensor([5, 5])  # past the image's edge: clamped to it
    shifted = cut_tiles(images, corners, 9, shifts)
    assert torch.equal(shifted[0, 1, 2], images[0, 2, 6:15, 5:14])
    assert torch.equal(shifted[0, 1, :2], tiles[0, 1, :2])
    assert torch.equal(shifted[1, 0, 0], images[1, 0, 11:20, 11:20])


def test_grayscale_converts_only_the_chosen_samples() -> None:
    tiles = torch.rand(2, 1, 3, 4, 4)
    out = to_grayscale(tiles, torch.tensor([True, False]))
    luma = 0.299 * tiles[0, 0, 0] + 0.587 * tiles[0, 0, 1] + 0.114 * tiles[0, 0, 2]
    for c in range(3):
        torch.testing.assert_close(out[0, 0, c], luma)
    assert torch.equal(out[1], tiles[1])


def test_tiles_are_standardized_per_channel() -> None:
    tiles = torch.randn(4, 9, 3, 8, 8) * 5 + 3
    out = standardize_tiles(tiles)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(4, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1)), torch.ones(4, 9, 3), atol=1e-4, rtol=0)
    assert torch.equal(standardize_tiles(torch.full((1, 1, 3, 4, 4), 7.0)), torch.zeros(1, 1, 3, 4, 4))
