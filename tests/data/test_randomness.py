"""Per-sample randomness: draws are functions of the key, and keep torchvision's distributions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from selfsup.data.sampler import EpochSampler
from selfsup.data.transforms import KeyedAugmentation, crop_box, padded_crop_offset
from selfsup.tasks.masking import block_mask, random_masking
from selfsup.tasks.rotnet import rotate_batch
from selfsup.training.randomness import FLIP, integers, mix64, sample_key, uniform

MASK64 = (1 << 64) - 1


def _splitmix_reference(x: int) -> int:
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_mixer_is_splitmix64() -> None:
    values = [0, 1, 12345, (1 << 63) - 1, -(1 << 63), -1]
    mixed = mix64(torch.tensor(values)).tolist()
    assert [m & MASK64 for m in mixed] == [_splitmix_reference(v) for v in values]


def test_a_key_depends_on_seed_epoch_and_index_only() -> None:
    keys = sample_key(0, 3, torch.arange(100))
    assert torch.equal(keys[[7, 42]], sample_key(0, 3, torch.tensor([7, 42])))
    assert len(set(keys.tolist())) == 100
    assert not torch.equal(keys, sample_key(1, 3, torch.arange(100)))
    assert not torch.equal(keys, sample_key(0, 4, torch.arange(100)))
    # Batched draws are per row: a sample draws the same in a batch of 100 as alone.
    assert torch.equal(uniform(keys, FLIP, 5)[42], uniform(keys[42:43], FLIP, 5)[0])


def test_crop_boxes_follow_torchvision_statistics() -> None:
    scale, ratio, n = (0.2, 1.0), (3 / 4, 4 / 3), 4000
    ours = torch.tensor([crop_box(k, 64, 48, scale, ratio) for k in sample_key(0, 0, torch.arange(n))])
    rrc = v2.RandomResizedCrop(16, scale=scale, ratio=ratio)
    image = torch.zeros(3, 64, 48, dtype=torch.uint8)
    theirs = torch.tensor([list(rrc.make_params([image]).values()) for _ in range(n)])
    for boxes in (ours, theirs):
        assert (boxes[:, 0] + boxes[:, 2] <= 64).all() and (boxes[:, 1] + boxes[:, 3] <= 48).all()
    area = [(b[:, 2] * b[:, 3]).double() / (64 * 48) for b in (ours, theirs)]
    assert area[0].min() >= 0.19 and area[0].max() <= 1.0
    assert abs(area[0].mean() - area[1].mean()) < 0.02  # std of either mean is about 0.004
    aspect = [(b[:, 3] / b[:, 2]).log().mean() for b in (ours.double(), theirs.double())]
    assert abs(aspect[0] - aspect[1]) < 0.02


def test_augmentation_is_a_function_of_the_key_and_flips_half() -> None:
    augment = KeyedAugmentation(8, (0.3, 1.0))
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    key = sample_key(0, 1, 5)
    assert torch.equal(augment(image, key), augment(image, key))
    flips = (uniform(sample_key(0, 0, torch.arange(10000)), FLIP, 1) < 0.5).float().mean()
    assert abs(flips - 0.5) < 0.02


def test_rotations_are_balanced_and_follow_keys() -> None:
    keys = sample_key(0, 0, torch.arange(8000))
    _, targets = rotate_batch(torch.zeros(8000, 1, 2, 2), "random", keys=keys)
    counts = torch.bincount(targets, minlength=4).double() / 8000
    assert (counts - 0.25).abs().max() < 0.02
    _, half = rotate_batch(torch.zeros(4000, 1, 2, 2), "random", keys=keys[4000:])
    assert torch.equal(half, targets[4000:]), "a sample's rotation does not depend on its batch"


def test_masks_have_the_exact_ratio_and_are_uniform() -> None:
    keys = sample_key(0, 0, torch.arange(2000))
    _, mask, _ = random_masking(torch.zeros(2000, 16, 1), 0.75, keys=keys)
    assert (mask.sum(dim=1) == 12).all()
    assert (mask.mean(dim=0) - 0.75).abs().max() < 0.05  # every position masked as often
    blocks = block_mask(2000, 8, 2, 0.6, keys=keys)
    assert (blocks.view(2000, -1).sum(dim=1) == 10 * 4).all()  # ceil(16 * 0.6) = 10 blocks of 2 x 2
    assert torch.equal(block_mask(3, 8, 2, 0.6, keys=keys[:3]), blocks[:3])


def test_integers_are_in_range_and_uniform() -> None:
    draws = integers(sample_key(0, 0, torch.arange(5000)), 1, 4, torch.tensor([3, 5, 7, 11]))
    assert (draws >= 0).all() and (draws < torch.tensor([3, 5, 7, 11])).all()
    assert abs(draws[:, 3].double().mean() - 5.0) < 0.2


def test_two_ranks_with_half_batches_cover_one_rank_steps() -> None:
    one = EpochSampler(50, seed=3, shuffle=True, drop_last=True)
    ranks = [EpochSampler(50, seed=3, shuffle=True, drop_last=True, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in (one, *ranks):
        sampler.set_epoch(2)
    full = list(one)
    shares = [list(r) for r in ranks]
    for step in range(50 // 10):  # global batch 10: 5 per rank
        together = set(shares[0][step * 5 : step * 5 + 5]) | set(shares[1][step * 5 : step * 5 + 5])
        assert together == set(full[step * 10 : step * 10 + 10])


def test_a_resumed_sampler_continues_where_it_left_off() -> None:
    sampler = EpochSampler(30, seed=0, shuffle=True, drop_last=True)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.resume = (4, 12)
    assert list(sampler) == full[12:]
    assert list(sampler) == full, "the skip applies to one iteration only"


def test_workers_and_persistent_workers_draw_what_the_main_process_draws() -> None:
    from selfsup.data.synthetic import synthetic
    from tests.conftest import test_datamodule

    def epoch_batches(workers: int) -> list[list[torch.Tensor]]:
        data = test_datamodule(
            pretrain=lambda: synthetic(24, 20, seed=0),
            image_size=8,
            batch_size=8,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        loader = data.train_dataloader()
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out.append([torch.cat([b["image"].flatten(), b["key"], b["index"]]) for b in loader])
        return out

    main, workers = epoch_batches(0), epoch_batches(2)
    assert all(
        torch.equal(a, b) for ea, eb in zip(main, workers, strict=True) for a, b in zip(ea, eb, strict=True)
    )
    assert not torch.equal(main[0][0], main[1][0]), "a new epoch draws a new order and new crops"


def test_padded_crop_offsets_are_uniform_over_every_position() -> None:
    # RandomCrop(32, padding=4) on a 32 px image: 2 * 4 + 1 = 9 offsets per axis, 81 windows.
    keys = sample_key(0, 0, torch.arange(9000))
    offsets = torch.tensor([padded_crop_offset(k, 32, 32, 32, 4) for k in keys])
    for axis in range(2):
        counts = torch.bincount(offsets[:, axis], minlength=9)
        assert len(counts) == 9 and (counts - 1000).abs().max() < 150  # std of a count is about 30
    assert len({tuple(o) for o in offsets.tolist()}) == 81
    assert padded_crop_offset(keys[0], 40, 36, 32, 0)[0] <= 8  # larger images: any window inside


def test_padded_crop_is_the_window_of_the_zero_padded_image_then_a_flip() -> None:
    augment = KeyedAugmentation(32, crop="padded", crop_padding=4)
    unflipped = KeyedAugmentation(32, crop="padded", crop_padding=4, hflip=False)
    image = torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8)  # no zeros: padding shows
    flips = 0
    for key in sample_key(3, 2, torch.arange(400)):
        top, left = padded_crop_offset(key, 32, 32, 32, 4)
        reference = F.pad(image, (4, 4, 4, 4), value=0)[:, top : top + 32, left : left + 32]
        assert torch.equal(unflipped(image, key), reference)
        flipped = bool(uniform(key.view(1), FLIP, 1).item() < 0.5)
        assert torch.equal(augment(image, key), reference.flip(-1) if flipped else reference)
        flips += flipped
    assert 160 < flips < 240  # flip rate 1/2: std of the count is 10


def test_padded_crop_refuses_bad_options_and_small_images() -> None:
    with pytest.raises(ValueError, match="crop must be one of"):
        KeyedAugmentation(32, crop="padding")
    with pytest.raises(ValueError, match="at least 24 px"):
        KeyedAugmentation(32, crop="padded", crop_padding=4)(torch.zeros(3, 20, 20, dtype=torch.uint8), 1)
