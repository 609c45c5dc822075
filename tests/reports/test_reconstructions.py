"""Reconstruction grids: tile layout and content, PNG files, and when training writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

from selfsup.reports.reconstructions import (
    MASKED_GREY,
    ReconstructionGrids,
    denormalize,
    reconstruction_grid,
    save_grid,
)
from selfsup.stages.pretrain import pretrain
from tests.conftest import FAST

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _tile(grid: torch.Tensor, row: int, col: int, side: int, padding: int = 2) -> torch.Tensor:
    top, left = padding + row * (side + padding), padding + col * (side + padding)
    return grid[:, top : top + side, left : left + side]


def test_rows_show_original_masked_and_reconstruction() -> None:
    images, prediction = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1.0  # top half masked
    grid = reconstruction_grid(images, mask, prediction, MEAN, STD, min_tile=8)
    assert grid.shape == (3, 2 + 2 * 10, 2 + 3 * 10)
    original, predicted = denormalize(images, MEAN, STD), denormalize(prediction, MEAN, STD)
    for row in range(2):
        assert torch.allclose(_tile(grid, row, 0, 8), original[row])
        masked = _tile(grid, row, 1, 8)
        assert torch.allclose(masked[:, :4], torch.full((3, 4, 8), MASKED_GREY))
        assert torch.allclose(masked[:, 4:], original[row, :, 4:])
        reconstructed = _tile(grid, row, 2, 8)
        assert torch.allclose(reconstructed[:, :4], predicted[row, :, :4])
        assert torch.allclose(reconstructed[:, 4:], original[row, :, 4:])


def test_small_images_are_enlarged_by_a_whole_factor() -> None:
    images = torch.randn(1, 3, 32, 32)
    grid = reconstruction_grid(images, torch.zeros(1, 1, 32, 32), images, MEAN, STD, min_tile=96)
    assert grid.shape == (3, 2 + 98, 2 + 3 * 98)
    assert torch.equal(_tile(grid, 0, 0, 96)[:, :3, :3], _tile(grid, 0, 0, 96)[:, :1, :1].expand(3, 3, 3))


def test_save_grid_writes_a_png(tmp_path: Path) -> None:
    grid = torch.rand(3, 20, 30)
    path = save_grid(grid, tmp_path / "sub" / "g.png")
    written = read_image(str(path))
    assert written.shape == (3, 20, 30)
    assert (written.float() / 255 - grid).abs().max() <= 1 / 255 + 1e-6
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temporary file left behind


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="num_images"):
        ReconstructionGrids(every_n_epochs=1, num_images=0)


@pytest.mark.parametrize("task", ["mae", "simmim"])
def test_training_saves_grids_every_n_epochs_and_at_the_end(make_cfg, tmp_path: Path, task: str) -> None:
    run_dir = tmp_path / task
    overrides = [*FAST, "trainer.max_epochs=2", "trainer.max_steps=-1", "data.pretrain.num_images=16"]
    cfg = make_cfg(
        [
            f"task={task}",
            "encoder=vit_tiny",
            "encoder.patch_size=8",
            "encoder.depth=1",
            *overrides,
            "task.reconstructions.every_n_epochs=1",
            "task.reconstructions.num_images=3",
            f"paths.run_dir={run_dir}",
        ]
    )
    pretrain(cfg)
    folder = run_dir / "reconstructions"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch001.png", "epoch002.png", "final.png"]
    first, final = read_image(str(folder / "epoch001.png")), read_image(str(folder / "final.png"))
    assert first.shape == final.shape == (3, 2 + 3 * 98, 2 + 3 * 98)
    # Same images and masks each time: the original and masked columns do not change.
    columns = 2 + 2 * 98
    assert torch.equal(first[:, :, :columns], final[:, :, :columns])
