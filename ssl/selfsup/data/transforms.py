"""Base augmentation on the CPU (uint8 in, uint8 out) and normalization on the device.

Workers only decode and crop; tensors cross to the device as uint8 (a quarter of float32's bytes) and
are normalized there in one batched operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2


def train_transform(
    image_size: int,
    crop_scale: Sequence[float] = (0.2, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
) -> v2.Transform:
    """Random resized crop to ``image_size`` and an optional horizontal flip, on (3, H, W) uint8."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True)
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(image_size: int, crop_fraction: float = 1.0) -> v2.Transform:
    """Resize the short side to ``image_size / crop_fraction`` and take the centre ``image_size`` crop."""
    return v2.Compose(
        [v2.Resize(round(image_size / crop_fraction), antialias=True), v2.CenterCrop(image_size)]
    )


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, 3, H, W) uint8 -> float32 normalized by per-channel ``mean`` and ``std`` given in [0, 1] units."""
    scale = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    shift = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - shift) / scale
