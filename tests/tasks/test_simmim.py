"""SimMIM: block masks at the ratio, masked pixels never reach the encoder, L1 on masked pixels, learning."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.encoders import Encoder, ResNetEncoder, ViTEncoder
from selfsup.tasks.simmim import SimMIM, scaled_mask_patch
from selfsup.training.optim import build_optimizer


def _vit(size: int = 16) -> ViTEncoder:
    return ViTEncoder(image_size=size, patch_size=4, width=32, depth=2, num_heads=2)


ENCODERS = {"vit": _vit, "resnet": lambda size=16: ResNetEncoder(18, cifar_stem=True)}


@pytest.mark.parametrize(
    ("image_size", "unit", "expected"),
    [(224, 16, 32), (224, 1, 32), (32, 4, 4), (32, 8, 8), (64, 1, 8), (96, 1, 12), (64, 16, 16)],
)
def test_mask_patch_is_32_px_at_224_scaled_to_the_image(image_size: int, unit: int, expected: int) -> None:
    assert scaled_mask_patch(image_size, unit) == expected


def test_mask_patch_needs_two_by_two_patches() -> None:
    with pytest.raises(ValueError, match="2 x 2"):
        scaled_mask_patch(16, 16)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_pixel_masks_are_block_aligned_and_meet_the_ratio(kind: str) -> None:
    task = SimMIM(
        ENCODERS[kind](32), image_size=32, mask_patch_size=56, reconstructions=None
    )  # 8 px mask patches at 32 px
    assert task.mask_patch == 8
    mask = task.pixel_mask(task.draw_mask(10, torch.device("cpu")))
    assert mask.shape == (10, 1, 32, 32)
    blocks = mask.view(10, 4, 8, 4, 8)
    assert torch.equal(blocks.all(dim=4).all(dim=2), blocks.any(dim=4).any(dim=2))
    masked_blocks = blocks.all(dim=4).all(dim=2).flatten(1).sum(dim=1)
    assert masked_blocks.tolist() == [math.ceil(16 * 0.6)] * 10


def test_the_resnet_never_sees_a_masked_pixel() -> None:
    task = SimMIM(ResNetEncoder(18, cifar_stem=True), image_size=16, reconstructions=None)
    assert task.mask_patch == 2 and task.stride == 8
    with torch.no_grad():
        task.fill.value.copy_(torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1))
    seen: list[torch.Tensor] = []
    task.encoder.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = torch.randn(4, 3, 16, 16)
    mask = task.draw_mask(4, images.device)
    pixels = task.pixel_mask(mask).expand_as(images)
    task.eval()
    features = task.forward_encoder(images, mask)
    changed = images.clone()
    changed[pixels] = torch.randn(int(pixels.sum()))
    assert torch.equal(task.forward_encoder(changed, mask), features)
    assert torch.equal(seen[0], seen[1])
    fill = task.fill.value.expand_as(images)
    assert torch.equal(seen[0][pixels], fill[pixels])  # masked pixels are the fill, nothing else
    assert torch.equal(seen[0][~pixels], images[~pixels])


def test_the_vit_sees_mask_tokens_in_place_of_masked_patches() -> None:
    task = SimMIM(
        _vit(), image_size=16, mask_patch_size=112, reconstructions=None
    )  # 8 px mask patches: 2x2 tokens
    vit = task.vit
    entered: list[torch.Tensor] = []
    vit.blocks.register_forward_pre_hook(lambda module, args: entered.append(args[0].clone()))
    images = torch.randn(3, 3, 16, 16)
    mask = task.draw_mask(3, images.device)
    assert mask.shape == (3, 4, 4)
    task.eval()
    features = task.forward_encoder(images, mask)
    assert features.shape == (3, 32, 4, 4)
    changed = images + 10 * task.pixel_mask(mask).float() * torch.randn_like(images)
    assert torch.equal(task.forward_encoder(changed, mask), features)
    tokens = entered[0][:, 1:]  # after the class token
    expected_masked = task.fill.value + vit.patch_position_embedding(4, 4)[0]
    expected_visible = vit.embed_patches(images)
    for b in range(3):
        for j in range(16):
            expected = expected_masked[j] if mask[b].flatten()[j] else expected_visible[b, j]
            assert torch.allclose(tokens[b, j], expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_loss_is_l1_over_masked_pixels_only(kind: str) -> None:
    task = SimMIM(ENCODERS[kind](), image_size=16, reconstructions=None)
    images, pred = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    mask = task.draw_mask(2, images.device)
    pixels = task.pixel_mask(mask)[:, 0]
    errors = [
        (pred[b, c, y, x] - images[b, c, y, x]).abs()
        for b in range(2)
        for c in range(3)
        for y in range(16)
        for x in range(16)
        if pixels[b, y, x]
    ]
    loss = task.forward_loss(images, pred, mask)
    assert torch.allclose(loss, torch.stack(errors).mean(), atol=1e-6)
    visible_changed = torch.where(pixels.unsqueeze(1), images, images + 5.0)
    assert torch.equal(task.forward_loss(visible_changed, pred, mask), loss)
    masked_changed = torch.where(pixels.unsqueeze(1), images + 5.0, images)
    assert task.forward_loss(masked_changed, pred, mask) > loss


def test_head_predicts_full_images_from_the_last_feature_map() -> None:
    task = SimMIM(
        ResNetEncoder(18, cifar_stem=False), image_size=64, reconstructions=None
    )  # standard stem: stride 32
    assert task.stride == 32 and task.mask_patch == 8
    mask, prediction = task.reconstruct(torch.randn(2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert mask.shape == (2, 1, 64, 64) and prediction.shape == (2, 3, 64, 64)


def test_rejects_other_image_sizes() -> None:
    task = SimMIM(_vit(), image_size=16, reconstructions=None)
    task.check_input(16)
    with pytest.raises(ValueError, match="built for 16 px"):
        task.check_input(32)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_every_trainable_parameter_reaches_the_optimizer(kind: str) -> None:
    task = SimMIM(ENCODERS[kind](), image_size=16, reconstructions=None)
    optimizer = build_optimizer(torch.optim.AdamW, [task.encoder, *task.heads()], 1e-3, 0.05)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in task.parameters() if p.requires_grad}
    assert id(task.fill.value) in optimized


@pytest.mark.parametrize(("kind", "size", "steps"), [("vit", 16, 20), ("resnet", 8, 12)])
def test_a_few_steps_learn_to_fill_in_from_the_visible_pixels(kind: str, size: int, steps: int) -> None:
    torch.manual_seed(0)
    encoder: Encoder = ENCODERS[kind](size)
    task = SimMIM(encoder, image_size=size, reconstructions=None)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    # One colour per image: masked pixels are predictable only by reading the visible ones.
    images = torch.randn(8, 3, 1, 1).expand(8, 3, size, size).contiguous()
    zeros_loss = images.abs().mean().item()  # predicting 0 (about the colours' median) everywhere
    losses = []
    for _ in range(steps):
        loss = task.pretext_step(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert sum(losses[-3:]) / 3 < 0.6 * zeros_loss
