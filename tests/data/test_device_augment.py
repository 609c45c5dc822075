"""The batched base augmentation draws what the per-image one draws, and resamples like it."""

from __future__ import annotations

import pytest
import torch

from selfsup.data.device_augment import BatchAugmentation, crop_boxes, padded_crops, resized_crops
from selfsup.data.transforms import KeyedAugmentation, crop_box, padded_crop_offset
from selfsup.training.randomness import random_keys

KEYS = random_keys(512, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("size", "scale", "ratio"),
    [
        ((32, 32), (0.35, 1.0), (3 / 4, 4 / 3)),
        ((48, 80), (0.08, 1.0), (3 / 4, 4 / 3)),
        ((40, 40), (0.9, 1.0), (2.5, 3.0)),
    ],
)
def test_the_batched_boxes_are_the_per_image_boxes(size: tuple[int, int], scale, ratio) -> None:
    """Same keys, same boxes: the last case (aspect 2.5-3 on a square) falls back to the centre crop."""
    batched = crop_boxes(KEYS, *size, scale, ratio)
    single = torch.tensor([crop_box(k, *size, scale, ratio) for k in KEYS])
    assert torch.equal(batched, single)


def test_the_boxes_have_torchvisions_distribution() -> None:
    """Against torchvision's own RandomResizedCrop.get_params, drawn with torch's generator."""
    from torchvision.transforms import RandomResizedCrop

    scale, ratio, n = (0.2, 1.0), (3 / 4, 4 / 3), 20_000
    ours = crop_boxes(
        random_keys(n, generator=torch.Generator().manual_seed(1)), 64, 48, scale, ratio
    ).double()
    torch.manual_seed(1)
    image = torch.zeros(3, 64, 48)
    theirs = torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)]
    ).double()
    for name, stat in {
        "area": lambda b: b[:, 2] * b[:, 3] / (64 * 48),
        "log aspect": lambda b: torch.log(b[:, 3] / b[:, 2]),
        "centre row": lambda b: (b[:, 0] + b[:, 2] / 2) / 64,
        "centre column": lambda b: (b[:, 1] + b[:, 3] / 2) / 48,
    }.items():
        a, b = stat(ours), stat(theirs)
        # Means within 4 standard errors, spreads within 3 %.
        assert abs(a.mean() - b.mean()) < 4 * b.std() / n**0.5, name
        assert abs(a.std() / b.std() - 1) < 0.03, name
    assert (ours[:, 0] + ours[:, 2] <= 64).all() and (ours[:, 1] + ours[:, 3] <= 48).all()


def test_enlarging_crops_match_the_per_image_path_to_rounding() -> None:
    """The embedded data's case: 32 px images, boxes of 35-100 % of the area, cropped to 64 px."""
    images = torch.randint(
        0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    augment = dict(image_size=64, crop_scale=(0.35, 1.0), hflip=True)
    batched = BatchAugmentation(**augment)(images, KEYS[:64]).float()
    single = torch.stack(
        [KeyedAugmentation(**augment)(img, k) for img, k in zip(images, KEYS[:64], strict=True)]
    ).float()
    inner = (batched - single)[..., 4:-4, 4:-4].abs()  # away from the box edges
    assert inner.max() <= 1.0, "inside the box: bilinear at the same positions, uint8 rounding apart"
    assert (batched - single).abs().mean() < 2.0, "at the box edges: neighbours against replicated borders"


def test_shrinking_crops_stay_close_to_the_antialiased_path() -> None:
    # Smooth images (what photos are at this scale): 96 px boxes shrunk to 32 px.
    base = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(3)) * 255
    images = (
        torch.nn.functional.interpolate(base, size=96, mode="bicubic").clamp(0, 255).round().to(torch.uint8)
    )
    augment = dict(image_size=32, crop_scale=(0.5, 1.0), hflip=False)
    batched = BatchAugmentation(**augment)(images, KEYS[:16]).float()
    single = torch.stack(
        [KeyedAugmentation(**augment)(img, k) for img, k in zip(images, KEYS[:16], strict=True)]
    ).float()
    assert (batched - single).abs().mean() < 3.0


def test_padded_crops_and_flips_are_the_per_image_ones() -> None:
    images = torch.randint(
        0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)
    )
    augment = dict(image_size=32, crop="padded", crop_padding=4, hflip=True)
    batched = BatchAugmentation(**augment)(images, KEYS[:32])
    single = torch.stack(
        [KeyedAugmentation(**augment)(img, k) for img, k in zip(images, KEYS[:32], strict=True)]
    )
    assert torch.equal(batched, single)
    offsets = BatchAugmentation(**augment).offsets(KEYS[:32], 32, 32)
    assert offsets.tolist() == [list(padded_crop_offset(k, 32, 32, 32, 4)) for k in KEYS[:32]]


def test_the_building_blocks_on_fixed_boxes() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    whole = resized_crops(images, torch.tensor([[0, 0, 8, 8], [2, 2, 4, 4]]), 8)
    assert torch.allclose(whole[0], images[0]), "a full-image box at the same size is the image"
    assert torch.allclose(
        resized_crops(images, torch.tensor([[2, 2, 4, 4]] * 2), 4)[1], images[1, :, 2:6, 2:6]
    )
    cut = padded_crops(images, torch.tensor([[0, 0], [3, 5]]), 4, 2)
    assert (cut[0, :, :2, :] == 0).all() and torch.equal(cut[1], images[1, :, 1:5, 3:7])
