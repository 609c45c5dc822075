"""Reconstruction grids for masked-image pretraining: what the model sees and what it fills in.

Each row of a grid is one image: the original, the masked input (masked pixels painted grey), and the
reconstruction (predicted pixels where the image was masked, the original pixels elsewhere, as in
MAE's figures). :class:`ReconstructionGrids` saves one every N epochs and one at the end of training,
always from the same images and the same masks, so grids from one run can be compared side by side.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image

from selfsup.atomic import atomic_write
from selfsup.data.dataset import ImageDataset, collate
from selfsup.data.transforms import eval_transform
from selfsup.modes import evaluating
from selfsup.run_dir import RunDir

log = logging.getLogger(__name__)

MASKED_GREY = 0.5  # in [0, 1] pixel units


@runtime_checkable
class Reconstructs(Protocol):
    """A task that can show its reconstructions (MAE, SimMIM)."""

    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Mask ``images`` (B, 3, H, W, normalized) and predict them back.

        Returns:
            mask: (B, 1, H, W) float, 1 where a pixel was hidden from the encoder.
            prediction: (B, 3, H, W) in the same normalized units as ``images``.
        """
        ...


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, 3, H, W) normalized -> [0, 1] pixels (clamped)."""
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(shape)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(shape)
    return (images * std_t + mean_t).clamp(0, 1)


def reconstruction_grid(
    images: Tensor,
    mask: Tensor,
    prediction: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    min_tile: int = 96,
    padding: int = 2,
) -> Tensor:
    """One picture: a row per image with original | masked | reconstruction.

    Args:
        images: (B, 3, H, W) normalized originals.
        mask: (B, 1, H, W), 1 where masked.
        prediction: (B, 3, H, W) normalized predictions.
        mean: the normalization's per-channel mean, in [0, 1] units.
        std: the normalization's per-channel std.
        min_tile: tiles are enlarged (nearest neighbour, by a whole factor) to at least this many pixels,
            so that 32 px images stay legible.
        padding: white pixels between tiles.

    Returns:
        (3, rows, cols) float in [0, 1]; rows = B tiles, cols = 3 tiles.
    """
    original = denormalize(images.float(), mean, std)
    predicted = denormalize(prediction.float(), mean, std)
    mask = mask.float().expand_as(original)
    masked = original * (1 - mask) + MASKED_GREY * mask
    reconstructed = original * (1 - mask) + predicted * mask
    tiles = torch.stack([original, masked, reconstructed], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    scale = math.ceil(min_tile / images.shape[-1])
    if scale > 1:
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    return make_grid(tiles.cpu(), nrow=3, padding=padding, pad_value=1.0)


def save_grid(grid: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a (3, H, W) [0, 1] picture as PNG, atomically (temporary file, then rename)."""
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


class ReconstructionGrids(pl.Callback):
    """Saves reconstruction grids under ``<run dir>/reconstructions/`` during and after training.

    The images are ``num_images`` pretraining images spread evenly over the source, centre-cropped as
    for evaluation; the masks come from a generator seeded with ``seed`` each time. Files:
    ``epochNNN.png`` after every ``every_n_epochs`` completed epochs (0: never) and ``final.png`` when
    training ends. Only the global-zero process writes; the model runs in eval mode without gradients.

    Args:
        every_n_epochs: period in completed epochs; 0 keeps only the final grid.
        num_images: rows of each grid.
        seed: seed of the masks.
    """

    def __init__(self, every_n_epochs: int = 10, num_images: int = 8, seed: int = 0) -> None:
        if every_n_epochs < 0 or num_images < 1:
            raise ValueError(
                f"every_n_epochs must be >= 0 and num_images >= 1, got {every_n_epochs} and {num_images}"
            )
        self.every_n_epochs, self.num_images, self.seed = every_n_epochs, num_images, seed
        self._images: Tensor | None = None  # (N, 3, S, S) uint8, read once

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every_n_epochs and done % self.every_n_epochs == 0:
            self.save(trainer, pl_module, f"epoch{done:03d}.png")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module, "final.png")

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> Path | None:
        """Write one grid as ``<run dir>/reconstructions/<name>``; returns its path (None off rank zero)."""
        datamodule: Any = getattr(trainer, "datamodule", None)
        if not trainer.is_global_zero or datamodule is None:
            return None
        if not isinstance(pl_module, Reconstructs):
            raise TypeError(f"{type(pl_module).__name__} has no reconstruct(images) method")
        batch = datamodule.to_device({"image": self.fixed_images(datamodule)}, pl_module.device)
        images = batch["image"]
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        with evaluating(pl_module), torch.no_grad():
            mask, prediction = pl_module.reconstruct(images, generator)
        grid = reconstruction_grid(images, mask, prediction, datamodule.mean, datamodule.std)
        path = save_grid(grid, RunDir.default(trainer.default_root_dir).reconstructions / name)
        log.info("reconstructions saved to %s", path)
        return path

    def fixed_images(self, datamodule: Any) -> Tensor:
        """(N, 3, S, S) uint8: ``num_images`` pretraining images spread over the source, centre-cropped."""
        if self._images is None:
            transform = eval_transform(datamodule.image_size, datamodule.eval_crop_fraction)
            dataset = ImageDataset(datamodule.source("pretrain"), transform, "skip")
            count = min(self.num_images, len(dataset))
            picks = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
            batch = collate([dataset[i] for i in picks])  # unreadable images are left out
            if batch["image"].shape[0] == 0:
                raise RuntimeError("none of the images picked for reconstruction grids could be read")
            self._images = batch["image"]
        return self._images.clone()
