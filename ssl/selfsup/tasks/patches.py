"""Grids of tiles cut from a batch of images on the device: the geometry and the batched cutting that
patch-based pretext tasks share (Jigsaw puzzles; context prediction would import the same pieces).

- :class:`PuzzleGeometry`: a ``grid_size`` x ``grid_size`` grid of ``cell_size`` px cells, one
  ``tile_size`` px tile per cell; :meth:`PuzzleGeometry.fit` scales Noroozi & Favaro's 225 px window
  of 75 px cells and 64 px tiles to smaller images.
- :func:`draw_placement`: where each sample's grid sits in its image and where each tile sits in its cell.
- :func:`tile_corners`: the image coordinates of the tiles, in any order of cells.
- :func:`cut_tiles`: every channel of every tile of every sample by one indexing of a (copy-free)
  unfold view of the batch, optionally with a per-channel shift (chromatic aberration jitter).
- :func:`to_grayscale`, :func:`standardize_tiles`: per-sample grayscale and per-tile normalization.

No function loops over samples or tiles in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.training.randomness import OFFSETS, ORIGIN, integers, random_keys

PAPER_TILE, PAPER_CELL = 64, 75  # a tile keeps this fraction of its cell when sizes scale
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601, as in torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class PuzzleGeometry:
    """Where tiles come from: a ``grid_size`` x ``grid_size`` grid of ``cell_size`` px cells, one
    ``tile_size`` px tile per cell.

    Example:
        >>> PuzzleGeometry.fit(96)  # grid filling a 96 px image, tiles at the paper's 64/75 of a cell
        PuzzleGeometry(grid_size=3, cell_size=32, tile_size=27)
    """

    grid_size: int = 3
    cell_size: int = 75
    tile_size: int = 64

    def __post_init__(self) -> None:
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be at least 2, got {self.grid_size}")
        if not 1 <= self.tile_size <= self.cell_size:
            raise ValueError(
                f"tile_size must be between 1 and cell_size ({self.cell_size}), got {self.tile_size}"
            )

    @classmethod
    def fit(
        cls, image_size: int, grid_size: int = 3, cell_size: int | None = None, tile_size: int | None = None
    ) -> PuzzleGeometry:
        """The geometry for ``image_size`` px images; unset sizes scale the paper's (see module doc)."""
        cell = cell_size if cell_size is not None else image_size // grid_size
        tile = tile_size if tile_size is not None else cell * PAPER_TILE // PAPER_CELL
        return cls(grid_size, cell, tile)

    @property
    def num_tiles(self) -> int:
        return self.grid_size**2

    @property
    def window_size(self) -> int:
        """Side of the square the grid covers (the paper's 225 px crop)."""
        return self.grid_size * self.cell_size

    def cell_origins(self, device: torch.device | None = None) -> Tensor:
        """(T, 2) long: top-left (row, col) of each cell inside the window, cells in row-major order."""
        steps = torch.arange(self.grid_size, device=device) * self.cell_size
        rows, cols = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([rows.flatten(), cols.flatten()], dim=1)

    def check(self, image_size: int) -> None:
        """Raise ``ValueError`` when the grid does not fit into ``image_size`` px images."""
        if self.window_size > image_size:
            raise ValueError(
                f"the puzzle grid covers {self.grid_size} x {self.cell_size} px = {self.window_size} px "
                f"but the images are {image_size} px; raise data.image_size or lower task.cell_size"
            )


def draw_placement(
    batch: int,
    image_size: tuple[int, int],
    geometry: PuzzleGeometry,
    device: torch.device,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Random window positions and tile offsets, drawn per puzzle from its key, each uniform.

    Args:
        batch: number of puzzles B.
        image_size: (H, W) of the images.
        geometry: the puzzle geometry.
        device: where the draws live (the images' device).
        generator: random source of the keys when ``keys`` is None (on ``device``).
        keys: (B,) int64 sample keys (:mod:`selfsup.training.randomness`).

    Returns:
        origins: (B, 2) long, the window's top-left (row, col) in [0, (H, W) - window_size].
        offsets: (B, T, 2) long, each tile's top-left inside its cell, in [0, cell_size - tile_size].
    """
    if keys is None:
        keys = random_keys(batch, device, generator)
    room = torch.tensor([size - geometry.window_size + 1 for size in image_size], device=keys.device)
    origins = integers(keys, ORIGIN, 2, room)
    slack = geometry.cell_size - geometry.tile_size + 1
    offsets = integers(keys, OFFSETS, geometry.num_tiles * 2, slack).view(batch, geometry.num_tiles, 2)
    return origins, offsets


def tile_corners(origins: Tensor, offsets: Tensor, order: Tensor, geometry: PuzzleGeometry) -> Tensor:
    """Image coordinates of the tile shown at each position of each puzzle.

    Args:
        origins: (B, 2) window top-left per puzzle.
        offsets: (B, T, 2) tile top-left inside each cell, cells row-major.
        order: (B, T) source cell of the tile at each position.
        geometry: the puzzle geometry.

    Returns:
        (B, T, 2) long top-left (row, col) in the image of the tile at each position.
    """
    cells = geometry.cell_origins(order.device)[order]  # (B, T, 2)
    in_cell = offsets.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
    return origins.unsqueeze(1) + cells + in_cell


def cut_tiles(
    images: Tensor, corners: Tensor, tile_size: int, channel_shifts: Tensor | None = None
) -> Tensor:
    """Square tiles of a batch, every channel of every tile picked by one indexing operation.

    Args:
        images: (B, C, H, W).
        corners: (B, T, 2) long top-left (row, col) of each tile.
        tile_size: side t of a tile.
        channel_shifts: (B, T, C, 2) long per-channel displacement of each tile's window, or None.
            Shifted windows are clamped to the image, so a channel never reads outside it.

    Returns:
        (B, T, C, t, t) tiles, in the order of ``corners``.
    """
    batch, channels, height, width = images.shape
    num_tiles = corners.shape[1]
    # (B, C, H - t + 1, W - t + 1, t, t): every t x t window, a view with no copy.
    windows = images.unfold(2, tile_size, 1).unfold(3, tile_size, 1)
    top = corners[..., 0, None].expand(batch, num_tiles, channels)
    left = corners[..., 1, None].expand(batch, num_tiles, channels)
    if channel_shifts is not None:
        top = (top + channel_shifts[..., 0]).clamp(0, height - tile_size)
        left = (left + channel_shifts[..., 1]).clamp(0, width - tile_size)
    batch_index = torch.arange(batch, device=images.device).view(-1, 1, 1)
    channel_index = torch.arange(channels, device=images.device).view(1, 1, -1)
    return windows[batch_index, channel_index, top, left]


def to_grayscale(tiles: Tensor, gray: Tensor) -> Tensor:
    """Turn the tiles of the chosen puzzles to grayscale (the same luma in all three channels).

    The luma weights act on the normalized channels; with the near-equal per-channel stds of image
    datasets that is a grayscale image up to an affine change, which per-tile normalization removes.

    Args:
        tiles: (B, T, 3, t, t).
        gray: (B,) bool, the puzzles to convert.

    Returns:
        (B, T, 3, t, t).
    """
    weights = torch.tensor(LUMA_WEIGHTS, device=tiles.device, dtype=tiles.dtype).view(1, 1, 3, 1, 1)
    luma = (tiles * weights).sum(dim=2, keepdim=True).expand_as(tiles)
    return torch.where(gray.view(-1, 1, 1, 1, 1), luma, tiles)


def standardize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """(..., C, t, t) -> the same, each channel of each tile at zero mean and unit std (flat ones at 0)."""
    std, mean = torch.std_mean(tiles, dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)
