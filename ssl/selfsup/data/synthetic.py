"""A small synthetic labeled image set for tests: class-dependent and orientation-dependent.

Each class has its own colour and stripe frequency, so a linear probe can separate classes; every image
is brighter at the top, so rotation prediction is learnable. Deterministic for a seed.
"""

from __future__ import annotations

import math

import torch

from selfsup.data.sources import ArrayImages


def synthetic(num_images: int, image_size: int, num_classes: int = 4, *, seed: int) -> ArrayImages:
    """``num_images`` RGB images of ``image_size`` px in ``num_classes`` balanced classes, drawn by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    coords = torch.linspace(0, 1, image_size)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    freq = 2 + 2 * labels.float()  # stripes per image, per class
    phase = torch.rand(num_images, generator=g) * 2 * math.pi
    stripes = torch.sin(2 * math.pi * freq.view(-1, 1, 1) * cols + phase.view(-1, 1, 1))  # (N, S, S)
    hue = labels.float() / num_classes * 2 * math.pi
    colour = torch.stack([torch.cos(hue), torch.cos(hue + 2.1), torch.cos(hue + 4.2)], dim=1)  # (N, 3)
    top_light = 1 - rows  # brighter at the top
    images = 0.5 + 0.25 * stripes.unsqueeze(1) * colour.view(-1, 3, 1, 1) + 0.2 * top_light
    images = images + 0.05 * torch.randn(num_images, 3, image_size, image_size, generator=g)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayImages(pixels, labels, [f"class{i}" for i in range(num_classes)], f"synthetic(seed={seed})")
