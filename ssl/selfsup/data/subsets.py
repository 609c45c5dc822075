"""Seeded subsets of a split: label fractions for low-label regimes, and caps for quick comparisons.

The semi-supervised protocol of SimCLR and BYOL (1% and 10% of ImageNet's labels) keeps the class
balance of the full set. Here each class keeps ``round(fraction * n_c)`` of its ``n_c`` images (at
least one), drawn at random with the seed: the same seed gives the same subset, another seed another
one, so the spread over seeds includes the luck of which images were labeled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from selfsup.data.sources import UNLABELED, ImageSource


def source_labels(source: ImageSource) -> Tensor:
    """(N,) long class index of every image of a labeled source, without decoding any image.

    Every source of selfsup keeps its labels in a ``labels`` attribute; any other source is asked
    image by image (which reads each file once).
    """
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [source.get(i).label for i in range(len(source))]
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def stratified_fraction(labels: Tensor | Sequence[int], fraction: float, seed: int) -> Tensor:
    """Indices of a per-class random ``fraction`` of the images.

    Args:
        labels: (N,) class index per image; unlabeled images (-1) are never chosen.
        fraction: in (0, 1]; 1 keeps every labeled image.
        seed: draws the subset; the same seed always gives the same indices.

    Returns:
        (M,) sorted long indices into ``labels``, ``round(fraction * n_c)`` (at least 1) per class.

    Example:
        >>> stratified_fraction(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, seed=0).tolist()
        [0, 1, 4, 6]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"a label fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Tensor] = []
    for cls in torch.unique(labels).tolist():
        if cls == UNLABELED:
            continue
        members = torch.nonzero(labels == cls).flatten()
        keep = max(1, round(fraction * len(members)))
        # One permutation per class, drawn in class order from one seeded generator.
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def capped_indices(labels: Tensor | Sequence[int], max_images: int, seed: int) -> Tensor:
    """Indices of at most ``max_images`` images, stratified by class where there are labels.

    Each class keeps its share of the cap (largest remainders round, so the total is exactly
    ``max_images``); unlabeled images (-1) are drawn uniformly. The same seed gives the same subset.

    Args:
        labels: (N,) class index per image, or -1 for unlabeled ones.
        max_images: the cap; at least N keeps every image.
        seed: draws the subset.

    Returns:
        (min(N, max_images),) sorted long indices into ``labels``.

    Example:
        >>> labels = torch.tensor([0] * 6 + [1] * 2)
        >>> labels[capped_indices(labels, 4, seed=0)].bincount().tolist()  # the classes' 3:1 kept
        [3, 1]
    """
    if max_images < 1:
        raise ValueError(f"a cap must be a positive number of images, got {max_images}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if max_images >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    shares = torch.tensor([len(g) * max_images / len(labels) for g in groups], dtype=torch.float64)
    quotas = shares.floor().long()
    # Largest remainders get the images the floors left over (ties: the earlier class).
    left = max_images - int(quotas.sum())
    quotas[torch.argsort(shares - quotas, descending=True, stable=True)[:left]] += 1
    chosen = [
        g[torch.randperm(len(g), generator=generator)[: int(q)]] for g, q in zip(groups, quotas, strict=True)
    ]
    return torch.cat(chosen).sort().values
