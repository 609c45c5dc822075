"""The puzzle picture: tiles land in the cells their order names, frames say right or wrong, a png is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from selfsup.reports.puzzles import RIGHT, WRONG, arrange_tiles, display_range, save_puzzle_grid


def test_display_range_stretches_each_tile_to_unit_range() -> None:
    tiles = torch.randn(2, 4, 3, 5, 5) * 3 + 1
    out = display_range(tiles)
    assert torch.allclose(out.amin(dim=(-3, -2, -1)), torch.zeros(2, 4))
    assert torch.allclose(out.amax(dim=(-3, -2, -1)), torch.ones(2, 4))
    assert torch.equal(display_range(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_tile_p_is_drawn_in_cell_p_of_the_order_with_its_frame() -> None:
    tiles = torch.stack([torch.full((3, 12, 12), p / 10) for p in range(4)])  # tile p has value p/10
    cells = torch.tensor([2, 0, 3, 1])
    frames = torch.tensor([RIGHT, WRONG, RIGHT, WRONG])
    canvas = arrange_tiles(tiles, cells, grid_size=2, frames=frames)
    border, slot = 1, 14
    assert canvas.shape == (3, 2 * slot, 2 * slot)
    for p, cell in enumerate(cells.tolist()):
        row, col = divmod(cell, 2)
        top, left = row * slot, col * slot
        inner = canvas[:, top + border : top + slot - border, left + border : left + slot - border]
        assert torch.allclose(inner, torch.full_like(inner, p / 10))
        assert torch.allclose(canvas[:, top, left], frames[p])


def test_grid_image_is_written(tmp_path: Path) -> None:
    tiles = torch.randn(3, 9, 3, 10, 10)
    true_order = torch.stack([torch.randperm(9) for _ in range(3)])
    predicted = true_order.clone()
    predicted[0, :2] = predicted[0, :2].flip(0)
    path = save_puzzle_grid(tmp_path / "sub" / "puzzles.png", tiles, true_order, predicted, grid_size=3)
    assert path == tmp_path / "sub" / "puzzles.png"
    with Image.open(path) as image:
        width, height = image.size
    assert (width, height) == (750, 3 * 270)  # 7.5 in wide, one 2.7 in row per puzzle, 100 dpi
    assert [p.name for p in path.parent.iterdir()] == ["puzzles.png"]  # no temporary file left


def test_a_failing_writer_leaves_the_old_picture_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "puzzles.png"
    path.write_bytes(b"old picture")

    def half_written(self: Figure, fname: Path, **kwargs: object) -> None:
        Path(fname).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    order = torch.arange(4).view(1, 4)
    with pytest.raises(OSError, match="disk full"):
        save_puzzle_grid(path, torch.randn(1, 4, 3, 6, 6), order, order, grid_size=2)
    assert path.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["puzzles.png"]
