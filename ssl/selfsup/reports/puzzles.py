"""A picture of Jigsaw puzzles: the shuffled tiles, and the tiles put back by the true and predicted order.

One row per puzzle, three panels: the tiles in the order the network saw them, the tiles placed where
the predicted permutation says they came from (green frame: right cell, red: wrong), and the tiles
placed by the true permutation (the original layout, with the gaps between tiles). It shows at a
glance what the network is given (normalization, jitter, grayscale) and how well it solves puzzles.
:class:`PuzzleGrid` draws it into ``<run dir>/puzzles.png`` when training ends.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from torch import Tensor

from selfsup.atomic import atomic_write
from selfsup.modes import evaluating
from selfsup.run_dir import RunDir
from selfsup.tasks.patches import PuzzleGeometry

log = logging.getLogger(__name__)

RIGHT, WRONG, NEUTRAL = (0.1, 0.7, 0.2), (0.85, 0.1, 0.1), (1.0, 1.0, 1.0)


def display_range(tiles: Tensor) -> Tensor:
    """(..., C, t, t) -> the same in [0, 1], each tile stretched from its own min to its own max.

    Tiles arrive normalized (per dataset or per tile); stretching each one alone shows its content
    whatever the normalization was.
    """
    low = tiles.amin(dim=(-3, -2, -1), keepdim=True)
    high = tiles.amax(dim=(-3, -2, -1), keepdim=True)
    return (tiles - low) / (high - low).clamp_min(1e-8)


def arrange_tiles(tiles: Tensor, cells: Tensor, grid_size: int, frames: Tensor | None = None) -> Tensor:
    """Place tile ``p`` into grid cell ``cells[p]``, each tile inside a coloured frame.

    Args:
        tiles: (T, 3, t, t) in [0, 1].
        cells: (T,) long, the cell (row-major) each tile goes to.
        grid_size: cells per side.
        frames: (T, 3) frame colour of each tile; None for white.

    Returns:
        (3, grid_size * (t + 2b), grid_size * (t + 2b)) with a frame of b = max(1, t // 12) px.
    """
    num_tiles, channels, size = tiles.shape[0], tiles.shape[1], tiles.shape[-1]
    border = max(1, size // 12)
    slot = size + 2 * border
    if frames is None:
        frames = torch.tensor(NEUTRAL).expand(num_tiles, 3)
    canvas = torch.ones(channels, grid_size * slot, grid_size * slot)
    for p in range(num_tiles):  # at most a few dozen tiles, drawn once per report
        row, col = divmod(int(cells[p]), grid_size)
        top, left = row * slot, col * slot
        canvas[:, top : top + slot, left : left + slot] = frames[p].view(-1, 1, 1)
        canvas[:, top + border : top + border + size, left + border : left + border + size] = tiles[p]
    return canvas


def save_puzzle_grid(
    path: str | os.PathLike[str],
    tiles: Tensor,
    true_order: Tensor,
    predicted_order: Tensor,
    grid_size: int,
) -> Path:
    """Draw puzzles with their true and predicted order into a png file (replaced atomically).

    Args:
        path: the png file to write; its folder is created if needed.
        tiles: (N, T, C, t, t), ``tiles[n, p]`` the tile at position p of puzzle n (C = 1 or 3).
        true_order: (N, T) long, the cell each tile came from.
        predicted_order: (N, T) long, the cell the network says each tile came from.
        grid_size: cells per side (T = grid_size**2).

    Returns:
        The written file.
    """
    from matplotlib.figure import Figure  # imported here: plotting is not needed for training

    tiles = display_range(tiles.detach().float().cpu())
    if tiles.shape[2] == 1:
        tiles = tiles.expand(-1, -1, 3, -1, -1)
    true_order, predicted_order = true_order.cpu(), predicted_order.cpu()
    num_puzzles, num_tiles = tiles.shape[:2]
    figure = Figure(figsize=(7.5, 2.7 * num_puzzles), layout="constrained")
    axes = figure.subplots(num_puzzles, 3, squeeze=False)
    for n in range(num_puzzles):
        right = predicted_order[n] == true_order[n]
        frames = torch.tensor([RIGHT if r else WRONG for r in right.tolist()])
        panels = {
            "as shuffled (network input)": arrange_tiles(tiles[n], torch.arange(num_tiles), grid_size),
            "placed by prediction": arrange_tiles(tiles[n], predicted_order[n], grid_size, frames),
            "placed by true order": arrange_tiles(tiles[n], true_order[n], grid_size),
        }
        for ax, (title, canvas) in zip(axes[n], panels.items(), strict=True):
            ax.imshow(canvas.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        axes[n, 0].text(
            0.0,
            -0.08,
            f"true {_order(true_order[n])}   predicted {_order(predicted_order[n])}   "
            f"{int(right.sum())}/{num_tiles} tiles right",
            transform=axes[n, 0].transAxes,
            fontsize=7,
            va="top",
        )
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def _order(order: Tensor) -> str:
    return " ".join(str(int(c)) for c in order)


@runtime_checkable
class SolvesPuzzles(Protocol):
    """A task that makes and solves puzzles (Jigsaw)."""

    permutations: Tensor  # (P, T) long: the permutation set, label k is row k
    geometry: PuzzleGeometry

    def puzzles(self, images: Tensor) -> Any:
        """(B, 3, H, W) normalized images -> puzzles with ``tiles`` (B, T, C, t, t) and ``order`` (B, T)."""
        ...

    def solve(self, tiles: Tensor) -> Tensor:
        """(B, T, C, t, t) tiles -> (B, P) permutation logits."""
        ...


def draw_puzzles(task: SolvesPuzzles, images: Tensor, path: str | os.PathLike[str]) -> Path:
    """Make one puzzle per image, solve it in eval mode without gradients, and draw both to ``path``.

    Args:
        task: the puzzle task; its train/eval mode is restored afterwards.
        images: (N, 3, H, W) normalized images on the task's device.
        path: the png file to write.

    Returns:
        The written file.
    """
    with evaluating(task), torch.no_grad():  # type: ignore[type-var]
        puzzles = task.puzzles(images)
        predicted = task.solve(puzzles.tiles).argmax(dim=1)
    return save_puzzle_grid(
        path, puzzles.tiles, puzzles.order, task.permutations[predicted], task.geometry.grid_size
    )


class PuzzleGrid(pl.Callback):
    """Draws ``num_puzzles`` puzzles into ``<run dir>/puzzles.png`` when training ends.

    The puzzles are made from the first images of the last training batch, with the task's own
    options (jitter, grayscale, normalization) and its global random state, and solved by the trained
    network in eval mode. Only the global-zero process writes.

    Args:
        num_puzzles: rows of the picture, at most the batch size.
    """

    def __init__(self, num_puzzles: int) -> None:
        if num_puzzles < 1:
            raise ValueError(f"num_puzzles must be >= 1, got {num_puzzles}")
        self.num_puzzles = num_puzzles
        self._images: Tensor | None = None  # (N, 3, H, W): the latest non-empty batch's first images

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = batch["image"]
        if images.shape[0] > 0:  # a batch whose images were all unreadable trains nothing
            self._images = images[: self.num_puzzles].detach()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._images is None or not trainer.is_global_zero:
            return
        if not isinstance(pl_module, SolvesPuzzles):
            raise TypeError(f"{type(pl_module).__name__} does not make and solve puzzles")
        path = draw_puzzles(pl_module, self._images, RunDir.default(trainer.default_root_dir).puzzles)
        log.info("puzzles with their true and predicted order: %s", path)
