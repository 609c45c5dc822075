"""RotNet: rotations are exactly torch.rot90 of their source images, labels match, training learns."""

from __future__ import annotations

import pytest
import torch

from selfsup.encoders import ResNetEncoder
from selfsup.tasks.rotnet import RotNet, rotate_batch


def test_all_rotations_are_rot90_of_their_source() -> None:
    images = torch.randn(5, 3, 8, 8)
    inputs, targets = rotate_batch(images, "all")
    assert inputs.shape == (20, 3, 8, 8) and targets.shape == (20,)
    for j in range(20):
        source, k = j % 5, int(targets[j])
        assert k == j // 5
        assert torch.equal(inputs[j], torch.rot90(images[source], k, dims=(1, 2)))


def test_random_rotation_per_image_is_rot90_with_its_label() -> None:
    images = torch.randn(64, 3, 6, 6)
    inputs, targets = rotate_batch(images, "random", torch.Generator().manual_seed(1))
    assert inputs.shape == images.shape
    assert set(targets.tolist()) == {0, 1, 2, 3}  # 64 draws cover all four
    for i in range(64):
        assert torch.equal(inputs[i], torch.rot90(images[i], int(targets[i]), dims=(1, 2)))


def test_rotations_are_distinct_for_an_asymmetric_image() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    inputs, _ = rotate_batch(image, "all")
    assert len({tuple(x.flatten().tolist()) for x in inputs}) == 4


def test_non_square_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(2, 3, 8, 6))


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="rotations must be one of"):
        RotNet(ResNetEncoder(18, cifar_stem=True), rotations="three")


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    task = RotNet(ResNetEncoder(18, cifar_stem=True))
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    # Asymmetric images (bright top rows) make rotation learnable within a few steps.
    images = torch.randn(8, 3, 16, 16) * 0.1
    images[:, :, :4] += 2.0
    losses = []
    for _ in range(8):
        out = task.pretext_step(images)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_rotation_accuracy_is_the_fraction_predicted_right() -> None:
    task = RotNet(ResNetEncoder(18, cifar_stem=True), rotations="all")
    final = task.head[-1]
    with torch.no_grad():  # a head that always predicts "no rotation": right on one input in four
        final.weight.zero_()
        final.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert task.pretext_step(torch.randn(3, 3, 16, 16)).metrics["rotation_acc"].item() == 0.25


def test_defaults_train_what_task_rotnet_trains() -> None:
    assert RotNet(ResNetEncoder(18, cifar_stem=True)).rotations == "random"


@pytest.mark.parametrize("mode", ["all", "random"])
def test_mirroring_after_the_rotation_flips_each_input_from_its_key(mode: str) -> None:
    """VISSL's order: each rotated input mirrored or not, about half of them, the same for the same keys."""
    from selfsup.tasks.rotnet import mirror_rotated
    from selfsup.training.randomness import sample_key

    images = torch.randn(64, 3, 8, 8)
    keys = sample_key(0, 0, torch.arange(64))
    inputs, _ = rotate_batch(images, mode, keys=keys)
    mirrored = mirror_rotated(inputs, keys, mode)
    flipped = torch.tensor([torch.equal(m, i.flip(-1)) for m, i in zip(mirrored, inputs, strict=True)])
    kept = torch.tensor([torch.equal(m, i) for m, i in zip(mirrored, inputs, strict=True)])
    assert bool((flipped ^ kept).all()), "each input is either itself or its mirror image"
    assert 0.3 < flipped.float().mean() < 0.7
    assert torch.equal(mirror_rotated(inputs, keys, mode), mirrored)
    if mode == "all":  # the four rotations of one image are mirrored independently
        per_image = flipped.view(4, 64)
        assert bool((per_image != per_image[0]).any())


def test_a_mirrored_quarter_turn_is_the_opposite_turn_of_the_mirror_image() -> None:
    """Why VISSL's order confuses 90 and 270 degrees on left-right symmetric content."""
    image = torch.randn(3, 8, 8)
    assert torch.equal(
        torch.rot90(image, 1, dims=(1, 2)).flip(-1), torch.rot90(image.flip(-1), 3, dims=(1, 2))
    )


def test_vissls_resnet50_recipe(make_cfg) -> None:
    """VISSL's rotnet_8gpu_resnet.yaml: one random rotation, mirrored after it, RandomResizedCrop(224),
    Linear 2048 -> 4; SGD 0.1 x batch / 256 (momentum 0.9, not Nesterov), wd 1e-4, 105 epochs."""
    from selfsup.stages.components import build_pretext_encoder, build_task

    cfg = make_cfg(["experiment=rotnet_vissl_rn50", "data=synthetic", "data.image_size=224"])
    assert cfg.task.rotations == "random" and cfg.task.hflip_after_rotation is True
    composed = make_cfg(["experiment=rotnet_vissl_rn50"]).data
    assert composed.hflip is False and list(composed.crop_scale) == [0.08, 1.0]
    assert (composed.image_size, composed.batch_size) == (224, 256)
    assert (cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.weight_decay) == (0.1, "linear", 1e-4)
    assert cfg.optim.optimizer.nesterov is False and cfg.trainer.max_epochs == 105
    assert [round(m * 105) for m in cfg.schedule.milestones] == [30, 60, 90, 100]
    assert cfg.schedule.warmup_fraction == 0 and cfg.schedule.gamma == 0.1
    task = build_task(cfg, build_pretext_encoder(cfg))
    assert isinstance(task, RotNet) and task.hflip_after_rotation
    (head,) = [m for m in task.head.modules() if isinstance(m, torch.nn.Linear)]
    assert (head.in_features, head.out_features) == (2048, 4)
