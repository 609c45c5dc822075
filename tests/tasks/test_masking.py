"""Masking helpers against plain-loop references: counts, per-sample randomness, order, blocks, patches."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.tasks.masking import block_mask, num_visible, patchify, random_masking, unpatchify, unshuffle


def _loop_random_masking(tokens: torch.Tensor, noise: torch.Tensor, keep: int) -> tuple[list, list]:
    """Reference: per sample, sort positions by noise and keep the first ``keep``, one sample at a time."""
    visible, masks = [], []
    for b in range(tokens.shape[0]):
        order = sorted(range(tokens.shape[1]), key=lambda j: float(noise[b, j]))
        kept = order[:keep]
        visible.append(torch.stack([tokens[b, j] for j in kept]))
        masks.append([0.0 if j in kept else 1.0 for j in range(tokens.shape[1])])
    return visible, masks


@pytest.mark.parametrize(("length", "ratio"), [(64, 0.75), (49, 0.75), (16, 0.6), (10, 0.5), (196, 0.9)])
def test_keeps_round_l_times_one_minus_ratio_tokens_per_sample(length: int, ratio: float) -> None:
    tokens = torch.randn(5, length, 3)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    keep = round(length * (1 - ratio))
    assert visible.shape == (5, keep, 3)
    assert mask.shape == ids_restore.shape == (5, length)
    assert mask.sum(dim=1).tolist() == [length - keep] * 5
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_matches_a_plain_loop_for_the_same_noise() -> None:
    tokens = torch.randn(4, 20, 6)
    noise = torch.rand(4, 20)
    visible, mask, _ = random_masking(tokens, 0.75, noise=noise)
    ref_visible, ref_mask = _loop_random_masking(tokens, noise, keep=5)
    for b in range(4):
        assert torch.equal(visible[b], ref_visible[b])
    assert mask.tolist() == ref_mask


def test_visible_tokens_are_the_unmasked_ones() -> None:
    tokens = torch.arange(2 * 16, dtype=torch.float32).view(2, 16, 1)
    visible, mask, _ = random_masking(tokens, 0.5)
    for b in range(2):
        assert sorted(visible[b, :, 0].tolist()) == tokens[b, mask[b] == 0, 0].tolist()


def test_masks_differ_between_samples_and_seeds_and_repeat_for_a_seed() -> None:
    tokens = torch.zeros(8, 64, 1)

    def draw(seed: int) -> torch.Tensor:
        return random_masking(tokens, 0.75, torch.Generator().manual_seed(seed))[1]

    first = draw(0)
    assert len({tuple(row.tolist()) for row in first}) == 8  # every sample its own mask
    assert not torch.equal(first, draw(1))
    assert torch.equal(first, draw(0))


def test_unshuffle_restores_the_natural_order() -> None:
    tokens = torch.randn(3, 12, 4)
    visible, mask, ids_restore = random_masking(tokens, 0.75)
    fillers = torch.full((3, 12 - visible.shape[1], 4), float("nan"))
    restored = unshuffle(torch.cat([visible, fillers], dim=1), ids_restore)
    # Reference: place each visible token at its own position, one by one.
    expected = torch.full_like(tokens, float("nan"))
    for b in range(3):
        for j in range(12):
            if mask[b, j] == 0:
                expected[b, j] = tokens[b, j]
    assert torch.equal(restored.isnan(), expected.isnan())
    assert torch.equal(restored[~restored.isnan()], expected[~expected.isnan()])
    assert torch.equal(restored.isnan().all(dim=-1).float(), mask)


def test_unshuffle_of_the_fully_shuffled_sequence_is_the_identity() -> None:
    tokens = torch.randn(4, 9, 2)
    noise = torch.rand(4, 9)
    ids_shuffle = noise.argsort(dim=1)
    shuffled = torch.stack([tokens[b, ids_shuffle[b]] for b in range(4)])
    _, _, ids_restore = random_masking(tokens, 0.5, noise=noise)
    assert torch.equal(unshuffle(shuffled, ids_restore), tokens)


@pytest.mark.parametrize(("length", "ratio"), [(4, 0.9), (4, 0.1), (16, 0.0), (16, 1.0)])
def test_ratios_leaving_nothing_visible_or_nothing_masked_are_rejected(length: int, ratio: float) -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(length, ratio)


@pytest.mark.parametrize(("size", "block", "ratio"), [(8, 2, 0.6), (32, 8, 0.6), (7, 1, 0.5), (12, 3, 0.3)])
def test_block_masks_are_block_aligned_and_meet_the_ratio(size: int, block: int, ratio: float) -> None:
    masks = block_mask(16, size, block, ratio, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (16, size, size) and masks.dtype == torch.bool
    side = size // block
    blocks = masks.view(16, side, block, side, block)
    # Every block is all masked or all visible.
    assert torch.equal(blocks.all(dim=4).all(dim=2), blocks.any(dim=4).any(dim=2))
    count = math.ceil(side * side * ratio)
    assert masks.flatten(1).sum(dim=1).tolist() == [count * block * block] * 16
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 16


def test_block_mask_needs_the_block_to_divide_the_grid() -> None:
    with pytest.raises(ValueError, match="must divide"):
        block_mask(2, 10, 4, 0.5)


def test_patchify_matches_a_plain_loop_and_unpatchify_inverts_it() -> None:
    images = torch.randn(2, 3, 12, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 9, 48)
    for b in range(2):
        for index in range(9):
            row, col = divmod(index, 3)
            cell = images[b, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4]  # (C, p, p)
            assert torch.equal(patches[b, index], cell.permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(patches, 4), images)
