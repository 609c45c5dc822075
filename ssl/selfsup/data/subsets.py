"""Label fractions for low-label regimes: a stratified, seeded subset of a labeled split.

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
