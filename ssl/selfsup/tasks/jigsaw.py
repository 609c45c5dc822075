"""Jigsaw puzzles: predict how the tiles of an image were shuffled (Noroozi & Favaro, ECCV 2016).

Protocol, with the paper's values as defaults (Sec. 3, Fig. 3):

- a random ``grid_size * cell_size`` window of the image (225 px), cut into a 3 x 3 grid of 75 px
  cells, and from each cell one ``tile_size`` tile (64 px) at a random offset: the gaps between tiles
  keep the network from solving puzzles by continuing edges and textures across tile borders;
- the 9 tiles shuffled by a permutation drawn from a fixed set of ``num_permutations`` (1000), chosen
  greedily from all 9! for maximal average Hamming distance (``permutation_selection: max_avg``, the
  paper's Algorithm 1; see :mod:`selfsup.tasks.permutations`); the label is the permutation's index;
- against shortcuts (Sec. 3.3): every tile normalized by its own per-channel mean and std (no
  low-level statistics shared between neighbours), each colour channel of each tile shifted by up
  to ``channel_jitter`` px (2; chromatic aberration tells where a tile sat relative to the lens
  centre) and ``grayscale_fraction`` (30 %) of the images turned to grayscale;
- a context-free network (CFN): the shared encoder embeds every tile on its own (all 9B tiles as one
  batch), a per-tile projection (the paper's fc6, 1024 units) is concatenated in tile order and an
  MLP (fc7, 4096 units) predicts the permutation index (fc8). The exported encoder is the tile
  encoder; it takes whole images downstream.

Small images scale the geometry: with ``cell_size`` and ``tile_size`` unset the grid fills the image
(cell = image_size // grid_size) and a tile keeps the paper's 64/75 of its cell (96 px images: 32 px
cells, 27 px tiles). The encoder must accept tiles of that size; :meth:`Jigsaw.check_input` says so
before training when it does not.

Data workers deliver the base-augmented crop only. Cutting, jitter, grayscale, normalization and
shuffling happen here, on the device, for the whole batch at once, with the shared tile helpers of
:mod:`selfsup.tasks.patches` (one indexing picks every channel of every tile of every puzzle). The
picture of puzzles with their true and predicted order is drawn by a callback the task returns,
:class:`~selfsup.reports.puzzles.PuzzleGrid`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import Tensor, nn

from selfsup.encoders.base import Encoder
from selfsup.tasks.base import PretextTask, StepOutput
from selfsup.tasks.heads import mlp
from selfsup.tasks.patches import (
    PuzzleGeometry,
    cut_tiles,
    draw_placement,
    standardize_tiles,
    tile_corners,
    to_grayscale,
)
from selfsup.tasks.permutations import SELECTIONS, permutation_set
from selfsup.training.optim import OptimSettings
from selfsup.training.randomness import GRAYSCALE, JITTER, PERMUTATION, integers, random_keys, uniform

log = logging.getLogger(__name__)


@dataclass
class Puzzles:
    """A batch of puzzles and where their tiles came from.

    Attributes:
        tiles: (B, T, C, t, t): ``tiles[b, p]`` was cut from cell ``order[b, p]``.
        labels: (B,) long, the index of each puzzle's permutation in the set.
        order: (B, T) long, ``permutations[labels]``: the source cell of the tile at each position.
        origins: (B, 2) long, top-left (row, col) of each puzzle's window in its image.
        offsets: (B, T, 2) long, top-left (row, col) of the tile inside each cell (cells row-major).
    """

    tiles: Tensor
    labels: Tensor
    order: Tensor
    origins: Tensor
    offsets: Tensor


def make_puzzles(
    images: Tensor,
    permutations: Tensor,
    geometry: PuzzleGeometry,
    channel_jitter: int = 0,
    grayscale_fraction: float = 0.0,
    normalize: bool = True,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
) -> Puzzles:
    """Cut, jitter, gray, normalize and shuffle one puzzle per image, on the images' device.

    Args:
        images: (B, 3, H, W) normalized images.
        permutations: (P, T) long, the permutation set; puzzle labels index it.
        geometry: the puzzle geometry (fits inside H x W).
        channel_jitter: largest shift in px of a colour channel (0: none); grayscale puzzles are not
            shifted, since their channels are one.
        grayscale_fraction: probability of a puzzle being grayscale.
        normalize: standardize each tile channel on its own.
        generator: random source of the keys when ``keys`` is None (on the images' device).
        keys: (B,) int64 sample keys: every draw of a puzzle (permutation, placement, jitter,
            grayscale) comes from its image's key (:mod:`selfsup.training.randomness`).

    Returns:
        The puzzles: tiles (B, T, 3, t, t) and their labels, order and placement.
    """
    batch, channels = images.shape[:2]
    device = images.device
    if keys is None:
        keys = random_keys(batch, device, generator)
    labels = integers(keys, PERMUTATION, 1, permutations.shape[0])[:, 0]
    order = permutations[labels]
    origins, offsets = draw_placement(
        batch, (images.shape[-2], images.shape[-1]), geometry, device, keys=keys
    )
    corners = tile_corners(origins, offsets, order, geometry)
    gray = uniform(keys, GRAYSCALE, 1)[:, 0] < grayscale_fraction
    shifts = None
    if channel_jitter > 0:
        count = geometry.num_tiles * channels * 2
        shifts = integers(keys, JITTER, count, 2 * channel_jitter + 1) - channel_jitter
        shifts = shifts.view(batch, geometry.num_tiles, channels, 2) * ~gray.view(-1, 1, 1, 1)
    tiles = cut_tiles(images, corners, geometry.tile_size, shifts)
    if grayscale_fraction > 0:
        tiles = to_grayscale(tiles, gray)
    if normalize:
        tiles = standardize_tiles(tiles)
    return Puzzles(tiles, labels, order, origins, offsets)


class Jigsaw(PretextTask):
    """Jigsaw puzzle solving with a context-free network.

    Args:
        encoder: the tile encoder to pretrain (shared by all tiles).
        image_size: side of the images the task receives (``data.image_size``).
        grid_size: tiles per side (3: 9 tiles).
        cell_size: side of a grid cell in px; None fills the image (``image_size // grid_size``).
        tile_size: side of a tile in px; None takes the paper's 64/75 of the cell.
        num_permutations: size of the permutation set, the number of classes.
        permutation_selection: ``max_avg`` (the paper's) or ``max_min`` (see permutations.py).
        permutation_seed: picks the set; the same on every process, whatever the run's seed.
        permutation_cache: folder where generated sets are kept; None generates every time (no
            default: the config sets ``${paths.cache_dir}/permutations``).
        normalize_tiles: standardize each tile channel on its own.
        channel_jitter: largest per-channel shift of a tile in px.
        grayscale_fraction: fraction of puzzles made from grayscale images.
        tile_dim: width of the per-tile projection (fc6).
        head_hidden_dims: hidden widths of the MLP on the concatenated projections (fc7).
        dropout: dropout after the ReLU of the per-tile projection and of each hidden layer (the
            context-free network's fc6 and fc7: 0.5 in the released Caffe model).
        report_puzzles: puzzles drawn into ``puzzles.png`` in the run directory at the end of
            training by :class:`~selfsup.reports.puzzles.PuzzleGrid` (0: none).
        optim: optimizer settings, see :class:`~selfsup.tasks.base.PretextTask`.
        schedule: see :class:`~selfsup.tasks.base.PretextTask`.

    Example:
        >>> encoder = ResNetEncoder(18, cifar_stem=True)
        >>> task = Jigsaw(encoder, image_size=96, num_permutations=100, permutation_cache=None)
        >>> out = task.pretext_step(torch.randn(8, 3, 96, 96))  # 8 puzzles of nine 27 px tiles
        >>> out.loss, out.metrics["jigsaw_acc"]
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        image_size: int,
        grid_size: int = 3,
        cell_size: int | None = None,
        tile_size: int | None = None,
        num_permutations: int = 1000,
        permutation_selection: str = "max_avg",
        permutation_seed: int = 0,
        permutation_cache: str | None,
        normalize_tiles: bool = True,
        channel_jitter: int = 2,
        grayscale_fraction: float = 0.3,
        tile_dim: int = 1024,
        head_hidden_dims: Sequence[int] = (4096,),
        dropout: float = 0.0,
        report_puzzles: int = 8,
        optim: OptimSettings | None = None,
        schedule: Callable | None = None,
    ) -> None:
        if permutation_selection not in SELECTIONS:
            raise ValueError(
                f"permutation_selection must be one of {SELECTIONS}, got {permutation_selection!r}"
            )
        if channel_jitter < 0:
            raise ValueError(f"channel_jitter must be >= 0, got {channel_jitter}")
        if not 0.0 <= grayscale_fraction <= 1.0:
            raise ValueError(f"grayscale_fraction must be in [0, 1], got {grayscale_fraction}")
        super().__init__(encoder, optim, schedule)
        self.geometry = PuzzleGeometry.fit(image_size, grid_size, cell_size, tile_size)
        self.geometry.check(image_size)
        log.info(
            "Jigsaw geometry on %d px images: %d px window, %d x %d cells of %d px, %d px tiles",
            image_size, self.geometry.window_size, grid_size, grid_size, self.geometry.cell_size,
            self.geometry.tile_size,
        )  # fmt: skip
        perms = permutation_set(
            num_permutations,
            self.geometry.num_tiles,
            permutation_selection,
            permutation_seed,
            permutation_cache,
        )
        self.permutations: Tensor
        self.register_buffer("permutations", perms)  # in checkpoints: a resumed run keeps its classes
        self.normalize_tiles, self.channel_jitter = normalize_tiles, channel_jitter
        self.grayscale_fraction, self.report_puzzles = grayscale_fraction, report_puzzles
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.tile_projection = nn.Sequential(
            nn.Linear(encoder.out_dim, tile_dim, bias=False),
            nn.BatchNorm1d(tile_dim),
            nn.ReLU(inplace=True),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
        )
        self.classifier = mlp(
            self.geometry.num_tiles * tile_dim, list(head_hidden_dims), num_permutations, dropout=dropout
        )

    @classmethod
    def encoder_input_size(cls, image_size: int, settings: Mapping[str, Any]) -> int:
        """The tile side: the encoder sees tiles, not images."""
        geometry = PuzzleGeometry.fit(
            image_size, settings["grid_size"], settings.get("cell_size"), settings.get("tile_size")
        )
        geometry.check(image_size)
        return geometry.tile_size

    def check_input(self, image_size: int) -> None:
        self.geometry.check(image_size)
        tile = self.geometry.tile_size
        try:
            self.encoder.check_image_size(tile)
        except ValueError as e:
            raise ValueError(
                f"the encoder sees {tile} px Jigsaw tiles ({self.geometry.cell_size} px cells on "
                f"{image_size} px images; set task.tile_size, task.cell_size or data.image_size): {e}"
            ) from None

    def puzzles(self, images: Tensor, keys: Tensor | None = None) -> Puzzles:
        """(B, 3, H, W) normalized images -> one puzzle each, with this task's geometry and options.

        ``keys``: (B,) int64 sample keys the puzzles are drawn from; None draws them from torch's generator.
        """
        return make_puzzles(
            images,
            self.permutations,
            self.geometry,
            self.channel_jitter,
            self.grayscale_fraction,
            self.normalize_tiles,
            keys=keys,
        )

    def embed_tiles(self, tiles: Tensor) -> Tensor:
        """(B, T, C, t, t) -> (B, T, tile_dim): all B*T tiles through the encoder as one batch."""
        batch, num_tiles = tiles.shape[:2]
        features = self.encode(tiles.flatten(0, 1))
        return self.tile_projection(features).view(batch, num_tiles, -1)

    def solve(self, tiles: Tensor) -> Tensor:
        """(B, T, C, t, t) -> (B, P) permutation logits from the tile embeddings concatenated in order."""
        return self.classifier(self.embed_tiles(tiles).flatten(1))

    def pretext_step(self, images: Tensor, keys: Tensor | None = None) -> StepOutput:
        puzzles = self.puzzles(images, keys)
        logits = self.solve(puzzles.tiles)
        loss = F.cross_entropy(logits, puzzles.labels)
        predicted = logits.detach().argmax(dim=1)
        metrics = {
            "jigsaw_acc": (predicted == puzzles.labels).float().mean(),
            # Partial credit: tiles whose position the predicted permutation gets right.
            "tile_acc": (self.permutations[predicted] == puzzles.order).float().mean(),
        }
        return StepOutput(loss, metrics)

    def chance_levels(self) -> dict[str, float]:
        return {"jigsaw_acc": 1 / len(self.permutations)}

    def configure_callbacks(self) -> list[Callback]:
        if self.report_puzzles <= 0:
            return []
        # Imported when training starts, so that the task module itself never loads the reports.
        from selfsup.reports.puzzles import PuzzleGrid

        return [PuzzleGrid(self.report_puzzles)]
