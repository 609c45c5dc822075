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


# -- caps for quick comparisons (data.max_images, max_train_images, max_test_images) ------------------
@pytest.mark.parametrize("cap", [1, 4, 25, 100, 257])
def test_a_cap_keeps_exactly_that_many_in_the_classes_proportions(cap: int) -> None:
    from selfsup.data.subsets import capped_indices

    indices = capped_indices(LABELS, cap, seed=0)
    assert len(indices) == cap == len(set(indices.tolist()))
    assert torch.equal(indices, indices.sort().values)
    counts = Counter(LABELS[indices].tolist())
    for c, n in SIZES.items():  # each class within one image of its exact share
        assert abs(counts.get(c, 0) - n * cap / len(LABELS)) < 1, (c, counts)


def test_a_cap_is_seeded_and_a_large_cap_keeps_everything() -> None:
    from selfsup.data.subsets import capped_indices

    first = capped_indices(LABELS, 50, seed=0)
    assert torch.equal(first, capped_indices(LABELS, 50, seed=0))
    assert not torch.equal(first, capped_indices(LABELS, 50, seed=1))
    assert torch.equal(capped_indices(LABELS, 10_000, seed=0), torch.arange(len(LABELS)))
    unlabeled = capped_indices(torch.full((100,), -1), 30, seed=0)
    assert len(unlabeled) == 30 and unlabeled.max() > 50, "unlabeled images are drawn from the whole set"
    with pytest.raises(ValueError, match="positive"):
        capped_indices(LABELS, 0, seed=0)


def test_capped_splits_from_the_config(make_cfg) -> None:
    from selfsup.stages.components import build_datamodule
    from tests.conftest import FAST

    overrides = [*FAST, "data.train.num_images=100", "data.test.num_images=60", "data.val_fraction=0"]
    full = build_datamodule(make_cfg(overrides), ["pretrain", "train", "test"])
    caps = ["data.max_images=10", "data.max_train_images=20", "data.max_test_images=30"]
    capped = build_datamodule(make_cfg([*overrides, *caps]), ["pretrain", "train", "test"])
    assert [len(capped.source(s)) for s in ("pretrain", "train", "test")] == [10, 20, 30]
    train = capped.source("train")
    assert Counter(source_labels(train).tolist()) == {c: 5 for c in range(4)}, "stratified: 5 of each class"
    assert train.classes == full.source("train").classes
    first = train.indices[0]
    assert train.name(0) == full.source("train").name(int(first)), "names say which image it is"
    assert torch.equal(train.get(0).data, full.source("train").get(int(first)).data)
    assert train.fingerprint() != full.source("train").fingerprint(), "feature caches tell them apart"
    again = build_datamodule(make_cfg([*overrides, *caps]), ["train"]).source("train")
    assert torch.equal(again.indices, train.indices) and again.fingerprint() == train.fingerprint()
    other = build_datamodule(make_cfg([*overrides, *caps, "data.subset_seed=1"]), ["train"]).source("train")
    assert not torch.equal(other.indices, train.indices)


@pytest.mark.parametrize("bad", ["data.max_images=0", "data.max_train_images=-3", "data.max_test_images=1.5"])
def test_a_bad_cap_is_named(make_cfg, bad: str) -> None:
    from selfsup.errors import ConfigError
    from selfsup.stages.components import build_datamodule
    from tests.conftest import FAST

    with pytest.raises(ConfigError, match=rf"'{bad.split('=')[0]}': must be a positive integer"):
        build_datamodule(make_cfg([*FAST, bad]), ["pretrain"])


# -- the validation split -----------------------------------------------------------------------------
def test_validation_is_a_seeded_stratified_hold_out_disjoint_from_train_and_test(make_cfg) -> None:
    from selfsup.stages.components import build_datamodule
    from tests.conftest import FAST

    overrides = [*FAST, "data.train.num_images=200", "data.test.num_images=40"]
    dm = build_datamodule(make_cfg(overrides), ["train", "test"])
    assert dm.has("val")
    train, val, test = (dm.source(s) for s in ("train", "val", "test"))
    assert len(val) == 20 and len(train) == 180, "10 % held out (data.val_fraction: 0.1)"
    assert Counter(source_labels(val).tolist()) == {c: 5 for c in range(4)}, "stratified"
    train_names = {train.name(i) for i in range(len(train))}
    val_names = {val.name(i) for i in range(len(val))}
    test_names = {test.name(i) for i in range(len(test))}
    assert not train_names & val_names and not val_names & test_names, "disjoint"
    assert len(train_names | val_names) == 200, "train and val cover the labeled train images"
    again = build_datamodule(make_cfg([*overrides, "seed=7"]), ["train"]).source("val")
    assert torch.equal(again.indices, val.indices), "the same for every run seed (and every encoder)"
    other = build_datamodule(make_cfg([*overrides, "data.subset_seed=3"]), ["train"]).source("val")
    assert not torch.equal(other.indices, val.indices)
    assert val.fingerprint() not in (train.fingerprint(), dm.source("test").fingerprint())
    none = build_datamodule(make_cfg([*overrides, "data.val_fraction=0"]), ["train"])
    assert not none.has("val") and len(none.source("train")) == 200


def test_a_bad_val_fraction_is_named(make_cfg) -> None:
    from selfsup.errors import ConfigError
    from selfsup.stages.components import build_datamodule
    from tests.conftest import FAST

    with pytest.raises(ConfigError, match=r"'data.val_fraction': must be a number in \[0, 1\), got 1.5"):
        build_datamodule(make_cfg([*FAST, "data.val_fraction=1.5"]), ["train"])


def test_a_class_with_one_image_keeps_it_for_training() -> None:
    from functools import partial

    from tests.conftest import test_datamodule

    labels = [0] * 20 + [1] * 20 + [2]
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    source = partial(ArrayImages, images, labels, ["a", "b", "c"], "three classes")
    dm = test_datamodule(train=source, val_fraction=0.1)
    assert Counter(source_labels(dm.source("val")).tolist()) == {0: 2, 1: 2}
    assert Counter(source_labels(dm.source("train")).tolist()) == {0: 18, 1: 18, 2: 1}
