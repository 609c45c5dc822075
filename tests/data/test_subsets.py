"""Label fractions: stratified per class, at least one image per class, seeded."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from selfsup.data.sources import ArrayImages, ImageSource, Sample
from selfsup.data.subsets import source_labels, stratified_fraction

# Unbalanced on purpose: 200, 50, 7 and 1 images, shuffled so that classes interleave.
SIZES = {0: 200, 1: 50, 2: 7, 3: 1}
LABELS = torch.cat([torch.full((n,), c) for c, n in SIZES.items()])[
    torch.randperm(258, generator=torch.Generator().manual_seed(0))
]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_each_class_keeps_its_share_and_at_least_one_image(fraction: float) -> None:
    indices = stratified_fraction(LABELS, fraction, seed=0)
    assert len(set(indices.tolist())) == len(indices)
    assert torch.equal(indices, indices.sort().values)
    counts = Counter(LABELS[indices].tolist())
    assert counts == {c: max(1, round(fraction * n)) for c, n in SIZES.items()}


def test_all_labels_at_fraction_one() -> None:
    assert torch.equal(stratified_fraction(LABELS, 1.0, seed=3), torch.arange(len(LABELS)))


def test_same_seed_same_subset_other_seed_other_subset() -> None:
    first = stratified_fraction(LABELS, 0.1, seed=0)
    assert torch.equal(first, stratified_fraction(LABELS.tolist(), 0.1, seed=0))
    others = [stratified_fraction(LABELS, 0.1, seed=s) for s in (1, 2, 3)]
    assert all(not torch.equal(first, other) for other in others)
    # Every seed is stratified the same way; only which images differ.
    assert all(Counter(LABELS[o].tolist()) == Counter(LABELS[first].tolist()) for o in others)


def test_unlabeled_images_are_never_chosen() -> None:
    labels = torch.tensor([-1, 0, -1, 0, 1, 1, -1])
    assert stratified_fraction(labels, 1.0, seed=0).tolist() == [1, 3, 4, 5]
    assert len(stratified_fraction(torch.full((5,), -1), 0.5, seed=0)) == 0


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="label fraction must be in"):
        stratified_fraction(LABELS, fraction, seed=0)


class _NoLabelList(ImageSource):
    """A source that only answers image by image."""

    def __init__(self, labels: list[int]) -> None:
        self.classes = ["a", "b"]
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def get(self, index: int) -> Sample:
        return Sample(torch.zeros(3, 2, 2, dtype=torch.uint8), self._labels[index], f"img{index}")


def test_source_labels_from_the_label_list_or_image_by_image() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    assert source_labels(ArrayImages(images, [1, 0, 1, 1], ["a", "b"], "arr")).tolist() == [1, 0, 1, 1]
    assert source_labels(_NoLabelList([0, 1, 1])).tolist() == [0, 1, 1]
