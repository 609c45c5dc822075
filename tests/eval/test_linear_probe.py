"""Linear probes: parameter-free BatchNorm, the multi-layer pooling rule, frozen encoders, seeding."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from selfsup.data.synthetic import synthetic
from selfsup.encoders import ResNetEncoder
from selfsup.eval.features import FeatureSet, auto_grid, extract_features, probe_grids
from selfsup.eval.linear_probe import MultiLayerProbe, fit_linear_probes, probe_optimizer
from selfsup.eval.probe_heads import LinearProbe
from tests.conftest import test_datamodule


def test_probe_is_linear_with_a_parameter_free_norm() -> None:
    probe = LinearProbe(16, 3)
    assert probe.norm.weight is None and probe.norm.bias is None
    assert sum(p.numel() for p in probe.parameters()) == 16 * 3 + 3


@pytest.mark.parametrize(
    ("channels", "spatial", "grid"),
    [(64, 56, 12), (256, 56, 6), (512, 28, 4), (1024, 14, 3), (2048, 7, 2)],  # ResNet-50 at 224 px
)
def test_auto_grid_reproduces_goyal_et_al(channels: int, spatial: int, grid: int) -> None:
    assert auto_grid(channels, spatial) == grid


def test_auto_grid_scales_to_small_images() -> None:
    grids = probe_grids(
        ResNetEncoder(18, cifar_stem=False), 32, [*ResNetEncoder.stage_names, "pooled"], "auto"
    )
    # a 32 px image leaves 8x8 maps after the stem: the grid cannot be finer than the map
    assert grids == {"stem": 8, "stage1": 8, "stage2": 4, "stage3": 2, "stage4": 1, "pooled": 1}
    assert probe_grids(ResNetEncoder(18, cifar_stem=False), 32, ["stage2"], 3) == {"stage2": 3}


def test_multi_layer_dimensions_follow_the_rule_and_the_encoder_is_untouched() -> None:
    encoder = ResNetEncoder(50, cifar_stem=False)
    dm = test_datamodule(train=partial(synthetic, 6, 96, seed=1), image_size=224, batch_size=3)
    layers = [*encoder.stage_names, "pooled"]
    grids = probe_grids(encoder, 224, layers, "auto")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = extract_features(encoder.train(), dm, "train", layers, grids)
    dims = {layer: t.shape[1] for layer, t in features.features.items()}
    assert dims == {
        "stem": 64 * 144,
        "stage1": 256 * 36,
        "stage2": 512 * 16,
        "stage3": 1024 * 9,
        "stage4": 2048 * 4,
        "pooled": 2048,
    }
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert encoder.training, "the encoder's mode is restored"


def _blobs(n: int, seed: int, offset: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = torch.randn(4, 10, generator=torch.Generator().manual_seed(99)) * 3
    return centres[labels] + torch.randn(n, 10, generator=g) + offset, labels  # the norm removes the offset


@pytest.mark.parametrize(("optimizer", "lr"), [("adamw", 1e-2), ("sgd", 0.1)])
def test_probes_learn_separable_features_per_layer(optimizer: str, lr: float) -> None:
    (x, y), (xt, yt) = _blobs(400, 0), _blobs(200, 1)
    noise = torch.randn(400, 10)
    train = FeatureSet({"good": x.half(), "noise": noise.half()}, y)
    test = FeatureSet({"good": xt.half(), "noise": torch.randn(200, 10).half()}, yt)
    accuracy = fit_linear_probes(
        train, test, num_classes=4, epochs=20, batch_size=64, lr=lr, optimizer=optimizer, schedule=None
    )
    assert accuracy["good"] > 95 and accuracy["noise"] < 50


def test_sgd_probe_uses_momentum_and_l2_decay() -> None:
    optimizer = probe_optimizer(MultiLayerProbe({"a": 4}, 2).parameters(), "sgd", 0.01, 5e-4)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 5e-4, True)
    with pytest.raises(ValueError, match=r"adamw.*sgd.*lars.*got 'lamb'"):
        probe_optimizer([], "lamb", 0.1, 0.0)


def test_heads_trained_together_equal_heads_trained_alone() -> None:
    (x, y), (xt, yt) = _blobs(300, 0), _blobs(100, 1)
    both = fit_linear_probes(
        FeatureSet({"a": x, "b": x * 2}, y),
        FeatureSet({"a": xt, "b": xt * 2}, yt),
        4,
        epochs=3,
        batch_size=32,
        schedule=None,
    )
    alone = fit_linear_probes(
        FeatureSet({"a": x}, y), FeatureSet({"a": xt}, yt), 4, epochs=3, batch_size=32, schedule=None
    )
    assert both["a"] == alone["a"]


def test_probe_is_reproducible_for_a_seed_and_varies_across_seeds() -> None:
    (x, _), (xt, yt) = _blobs(300, 0), _blobs(100, 1)
    y = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(5))  # noisy labels: seeds matter
    train, test = FeatureSet({"a": x}, y), FeatureSet({"a": xt}, yt)
    runs = [
        fit_linear_probes(train, test, 4, epochs=3, batch_size=32, seed=s, schedule=None)["a"]
        for s in (0, 0, 1)
    ]
    assert runs[0] == runs[1], "the same seed gives the same accuracy"
    assert runs[0] != runs[2], "another seed gives another accuracy (42 % against 25 % here)"
    probe = MultiLayerProbe({"a": 10}, 4)
    assert set(probe(train.features)) == {"a"}


def test_on_epoch_is_called_once_per_epoch() -> None:
    (x, y), (xt, yt) = _blobs(100, 0), _blobs(40, 1)
    calls: list[None] = []
    fit_linear_probes(
        FeatureSet({"a": x}, y), FeatureSet({"a": xt}, yt), 4, epochs=3, batch_size=32,
        on_epoch=lambda: calls.append(None), schedule=None,
    )  # fmt: skip
    assert len(calls) == 3


def test_default_layers_are_fixed_per_encoder_family() -> None:
    from selfsup.encoders import NINEncoder, ViTEncoder
    from selfsup.stages.probe import resolve_layers

    assert resolve_layers("default", ResNetEncoder(18, cifar_stem=False)) == ["stage2", "stage3"]
    vit = ViTEncoder(image_size=32, patch_size=8, width=32, depth=4, num_heads=2)
    assert resolve_layers("default", vit) == ["block2", "pooled"]
    assert resolve_layers("default", NINEncoder(num_blocks=4)) == ["block2", "block3"]
