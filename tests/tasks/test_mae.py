"""MAE: the encoder sees only visible tokens, the loss only masked patches, and a few steps learn."""

from __future__ import annotations

import pytest
import torch

from selfsup.encoders import ResNetEncoder, ViTEncoder
from selfsup.tasks.mae import MAE
from selfsup.tasks.masking import patchify
from selfsup.training.optim import build_optimizer


def _mae(norm_pix_loss: bool = True, decoder_depth: int = 1, **kwargs) -> MAE:
    encoder = ViTEncoder(image_size=16, patch_size=4, width=32, depth=2, num_heads=2)
    kwargs.setdefault("reconstructions", None)
    return MAE(encoder, decoder_width=16, decoder_depth=decoder_depth, decoder_heads=2,
               norm_pix_loss=norm_pix_loss, **kwargs)  # fmt: skip


def test_needs_a_vit() -> None:
    with pytest.raises(ValueError, match="needs a ViT encoder"):
        MAE(ResNetEncoder(18, cifar_stem=True), reconstructions=None)


def test_rejects_ratios_that_leave_no_token_visible() -> None:
    task = _mae()
    task.check_input(16)
    with pytest.raises(ValueError, match="keeps 0 visible"):
        task.check_input(4)  # one token: round(1 * 0.25) = 0 visible


def test_encoder_runs_on_each_samples_visible_tokens_only() -> None:
    task = _mae().eval()
    images = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    latent, mask, _ = task.forward_encoder(images, noise=noise)
    assert latent.shape == (3, 1 + 4, 32)
    vit = task.vit
    tokens = vit.embed_patches(images)
    for b in range(3):  # reference: the plain encoder on this sample's visible tokens, in noise order
        kept = [j for j in noise[b].argsort().tolist() if mask[b, j] == 0]
        expected = vit.norm(vit.blocks(vit.add_class_token(tokens[b, kept].unsqueeze(0))))
        assert torch.allclose(latent[b], expected[0], atol=1e-5)


def test_masked_pixels_do_not_reach_the_encoder() -> None:
    task = _mae().eval()
    images = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    latent, mask, _ = task.forward_encoder(images, noise=noise)
    changed = images.clone()
    pixel_mask = mask.view(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).bool()
    changed[pixel_mask.expand_as(images)] = 100.0
    assert torch.equal(task.forward_encoder(changed, noise=noise)[0], latent)


def test_decoder_puts_each_token_back_at_its_position() -> None:
    # Without decoder blocks every output depends on its own input token only, so the order shows.
    task = _mae(decoder_depth=0).eval()
    images = torch.randn(2, 3, 16, 16)
    latent, mask, ids_restore = task.forward_encoder(images, noise=torch.rand(2, 16))
    pred = task.forward_decoder(latent, ids_restore)
    decoder = task.decoder
    pos = decoder.pos_embedding[0]
    for b in range(2):
        visible = iter(decoder.embed(latent[b, 1:]))
        order = ids_restore[b].argsort().tolist()  # natural positions in masking order
        positions = {j: next(visible) for j in order[: latent.shape[1] - 1]}
        for j in range(16):
            token = positions[j] if mask[b, j] == 0 else decoder.mask_token[0, 0]
            assert torch.allclose(pred[b, j], decoder.pred(decoder.norm(token + pos[j])), atol=1e-5)


def test_norm_pix_target_matches_a_direct_per_patch_computation() -> None:
    task = _mae(norm_pix_loss=True)
    images = torch.randn(2, 3, 16, 16)
    target = task.patch_targets(images)
    for b in range(2):
        for index in range(16):
            row, col = divmod(index, 4)
            pixels = images[b, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4].permute(1, 2, 0).flatten()
            mean = pixels.sum() / pixels.numel()
            var = ((pixels - mean) ** 2).sum() / (pixels.numel() - 1)  # unbiased, as MAE's .var()
            assert torch.allclose(target[b, index], (pixels - mean) / torch.sqrt(var + 1e-6), atol=1e-5)
    assert torch.equal(_mae(norm_pix_loss=False).patch_targets(images), patchify(images, 4))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_the_mean_squared_error_over_masked_patches(norm_pix_loss: bool) -> None:
    task = _mae(norm_pix_loss)
    images, pred = torch.randn(2, 3, 16, 16), torch.randn(2, 16, 48)
    mask = (torch.rand(2, 16) < 0.75).float()
    target = task.patch_targets(images)
    errors = [((pred[b, j] - target[b, j]) ** 2).mean() for b in range(2) for j in range(16) if mask[b, j]]
    assert torch.allclose(task.forward_loss(images, pred, mask), torch.stack(errors).mean(), atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_ignores_visible_patches_and_sees_masked_ones(norm_pix_loss: bool) -> None:
    task = _mae(norm_pix_loss)
    images, pred = torch.randn(2, 3, 16, 16), torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[:, 5:] = 1.0  # patches 0-4 visible: rows 0-3 and the first patch of row 1
    loss = task.forward_loss(images, pred, mask)
    visible_changed = images.clone()
    visible_changed[:, :, 0:4, :] = torch.randn(2, 3, 4, 16)  # patches 0-3
    visible_changed[:, :, 4:8, 0:4] *= 3.0  # patch 4
    assert torch.equal(task.forward_loss(visible_changed, pred, mask), loss)
    masked_changed = images.clone()
    masked_changed[:, :, 12:16, 12:16] = torch.randn(2, 3, 4, 4)  # patch 15
    assert not torch.allclose(task.forward_loss(masked_changed, pred, mask), loss)


def test_every_trainable_parameter_reaches_the_optimizer() -> None:
    task = _mae()
    optimizer = build_optimizer(torch.optim.AdamW, [task.encoder, *task.heads()], 1e-3, 0.05)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert optimized == trainable
    assert id(task.decoder.mask_token) in optimized
    assert not task.decoder.pos_embedding.requires_grad


def test_reconstruct_gives_a_pixel_mask_at_the_ratio_and_full_images() -> None:
    task = _mae().eval()
    images = torch.randn(3, 3, 16, 16)
    mask, prediction = task.reconstruct(images, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 16, 16) and prediction.shape == images.shape
    assert mask.mean(dim=(1, 2, 3)).tolist() == [0.75] * 3
    again = task.reconstruct(images, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], mask) and torch.allclose(again[1], prediction)


def test_other_image_sizes_get_recomputed_position_embeddings() -> None:
    task = _mae()
    assert torch.isfinite(task.pretext_step(torch.randn(2, 3, 32, 32)).loss)


def test_a_few_steps_learn_to_fill_in_from_the_visible_patches() -> None:
    torch.manual_seed(0)
    task = _mae(norm_pix_loss=False)
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-2)
    # One colour per image: a masked patch is predictable only by reading the visible ones.
    images = torch.randn(16, 3, 1, 1).expand(16, 3, 16, 16).contiguous()
    zeros_loss = images.pow(2).mean().item()  # predicting 0, the colours' mean, everywhere
    losses = []
    for _ in range(25):
        loss = task.pretext_step(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert sum(losses[-3:]) / 3 < 0.25 * zeros_loss
