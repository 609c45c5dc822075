"""Every encoder config honours the Encoder interface (parametrized over conf/encoder/*.yaml)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from selfsup.encoders import Encoder, ResNetEncoder, ViTEncoder, feature_shapes
from selfsup.encoders.vit import sincos_position_embedding
from tests.conftest import options

SIZE = 32


def _build(make_cfg, name: str) -> Encoder:
    from selfsup.stages.components import build_encoder

    cfg = make_cfg([f"encoder={name}", f"data.image_size={SIZE}"])
    if "vit" in name:
        cfg.encoder.patch_size = 8  # keep the test light: 4x4 tokens
    return build_encoder(cfg)  # as the stages build it: `auto` settings chosen for SIZE px


@pytest.mark.parametrize("name", options("encoder"))
def test_interface(make_cfg, name: str) -> None:
    encoder = _build(make_cfg, name)
    images = torch.randn(2, 3, SIZE, SIZE)
    pooled = encoder(images)
    assert pooled.shape == (2, encoder.out_dim)
    names = [*encoder.stage_names, "pooled"]
    features = encoder.forward_features(images, names)
    assert list(features) == names
    assert torch.allclose(features["pooled"], pooled, atol=1e-5)
    for feature in features.values():
        assert feature.shape[0] == 2
    assert feature_shapes(encoder, SIZE, ["pooled"]) == {"pooled": (encoder.out_dim,)}


@pytest.mark.parametrize("name", options("encoder"))
def test_stages_cover_every_parameter_once(make_cfg, name: str) -> None:
    encoder = _build(make_cfg, name)
    covered: list[int] = []
    for _, parts in encoder.stage_modules():
        for part in parts:
            params = [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
            covered += [id(p) for p in params]
    assert sorted(covered) == sorted(id(p) for p in encoder.parameters())
    assert [name for name, _ in encoder.stage_modules()] == list(encoder.stage_names)


@pytest.mark.parametrize("name", options("encoder"))
def test_config_rebuilds_the_same_architecture(make_cfg, name: str) -> None:
    encoder = _build(make_cfg, name)
    twin = instantiate(encoder.config)
    assert type(twin) is type(encoder)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in encoder.state_dict().items()
    }


def test_forward_features_stops_at_the_deepest_layer_requested() -> None:
    encoder = ResNetEncoder(18, cifar_stem=True)
    called = []
    encoder.stage4.register_forward_hook(lambda *_: called.append("stage4"))
    encoder.forward_features(torch.zeros(1, 3, 32, 32), ["stage2"])
    assert not called


def test_resnet_feature_shapes_with_and_without_cifar_stem() -> None:
    shapes = feature_shapes(ResNetEncoder(18, cifar_stem=True), 32, ResNetEncoder.stage_names)
    assert shapes == {
        "stem": (64, 32, 32),
        "stage1": (64, 32, 32),
        "stage2": (128, 16, 16),
        "stage3": (256, 8, 8),
        "stage4": (512, 4, 4),
    }
    assert feature_shapes(ResNetEncoder(50, cifar_stem=False), 64, ["stage4"]) == {"stage4": (2048, 2, 2)}


def test_resnet_rejects_images_smaller_than_its_downsampling() -> None:
    ResNetEncoder(18, cifar_stem=True).check_image_size(8)
    with pytest.raises(ValueError, match="at least 32 px"):
        ResNetEncoder(18, cifar_stem=False).check_image_size(16)


def test_vit_tokens_and_checks() -> None:
    vit = ViTEncoder(image_size=32, patch_size=4, width=64, depth=2, num_heads=2)
    tokens = vit.embed_patches(torch.zeros(3, 3, 32, 32))
    assert tokens.shape == (3, 64, 64)
    assert vit.add_class_token(tokens).shape == (3, 65, 64)
    assert not vit.pos_embedding.requires_grad
    vit.check_image_size(64)
    with pytest.raises(ValueError, match="not a multiple of the ViT's patch size 4"):
        vit.check_image_size(30)
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        vit(torch.zeros(1, 3, 30, 30))


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_vit_takes_other_image_sizes(pos_embed: str) -> None:
    vit = ViTEncoder(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, pos_embed=pos_embed).eval()
    assert vit(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    native = vit.patch_position_embedding(4, 4)
    assert torch.equal(native, vit.pos_embedding[:, 1:])
    if pos_embed == "sincos":
        assert torch.allclose(vit.patch_position_embedding(8, 8)[0], sincos_position_embedding(8, 32))
    else:  # interpolating to the same grid is the identity
        assert vit.patch_position_embedding(8, 8).shape == (1, 64, 32)


def test_vit_mean_pool_is_maes_fc_norm_of_the_mean_patch_token() -> None:
    """MAE's global pool: fc_norm(x[:, 1:].mean(dim=1)), the mean normalized, not the normalized mean."""
    vit = ViTEncoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2, pool="mean").eval()
    with torch.no_grad():  # a LayerNorm with its own scale and shift, so the order of the two matters
        vit.norm.weight.uniform_(0.5, 1.5)
        vit.norm.bias.uniform_(-0.5, 0.5)
    images = torch.randn(2, 3, 16, 16)
    tokens = vit.blocks(vit.add_class_token(vit.embed_patches(images)))
    assert torch.allclose(vit(images), vit.norm(tokens[:, 1:].mean(dim=1)), atol=1e-6)
    assert not torch.allclose(vit(images), vit.norm(tokens)[:, 1:].mean(dim=1), atol=1e-3)
    cls = ViTEncoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2).eval()
    cls.load_state_dict(vit.state_dict())
    assert torch.allclose(cls(images), vit.norm(tokens)[:, 0], atol=1e-6)
    assert torch.allclose(vit.forward_features(images, ["pooled"])["pooled"], vit(images), atol=1e-6)


def test_mae_init_is_maes_initialize_weights() -> None:
    """models_mae.py: patch projection Xavier-uniform as a Linear, cls N(0, .02), Linears Xavier, zero biases."""
    import math

    torch.manual_seed(0)
    vit = ViTEncoder(image_size=32, patch_size=4, width=192, depth=2, num_heads=3, init="mae")
    proj = vit.patch_proj.weight.view(192, -1)  # (width, 3 * 4 * 4)
    bound = math.sqrt(6 / (proj.shape[0] + proj.shape[1]))
    assert proj.abs().max() <= bound and proj.abs().max() > 0.95 * bound, "Xavier-uniform over (192, 48)"
    assert vit.class_token.std().item() == pytest.approx(0.02, rel=0.2)
    mlp = vit.blocks[0].mlp[0]
    assert isinstance(mlp, torch.nn.Linear) and torch.all(mlp.bias == 0)
    assert mlp.weight.abs().max() <= math.sqrt(6 / (192 + 768))
    attention = vit.blocks[0].self_attention
    assert torch.all(attention.in_proj_bias == 0) and torch.all(attention.out_proj.bias == 0)
    assert attention.in_proj_weight.abs().max() <= math.sqrt(6 / (192 + 3 * 192))
    default = ViTEncoder(image_size=32, patch_size=4, width=192, depth=2, num_heads=3)
    assert torch.all(default.class_token == 0), "torchvision's own initialization stays the default"
    with pytest.raises(ValueError, match="init must be"):
        ViTEncoder(image_size=32, patch_size=4, width=192, depth=2, num_heads=3, init="timm")


def test_sincos_embedding_matches_mae_formula() -> None:
    grid, dim = 3, 8
    emb = sincos_position_embedding(grid, dim)
    assert emb.shape == (9, 8)
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    for index in range(9):
        row, col = divmod(index, grid)
        expected = torch.cat(
            [torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)]
        ).float()
        assert torch.allclose(emb[index], expected, atol=1e-6)


def test_auto_settings_follow_the_input_size() -> None:
    from selfsup.encoders.base import Encoder

    resnet = {"_target_": "selfsup.encoders.resnet.ResNetEncoder", "depth": 18, "cifar_stem": "auto"}
    assert ResNetEncoder.settings_for_input(resnet, 18)["cifar_stem"] is True
    assert ResNetEncoder.settings_for_input(resnet, 32)["cifar_stem"] is False
    assert ResNetEncoder.settings_for_input({**resnet, "cifar_stem": False}, 8)["cifar_stem"] is False
    assert resnet["cifar_stem"] == "auto", "the caller's settings are not changed"
    vit = {"image_size": "auto", "patch_size": 4}
    assert ViTEncoder.settings_for_input(vit, 12)["image_size"] == 12
    assert ViTEncoder.settings_for_input({**vit, "image_size": 32}, 12)["image_size"] == 32
    assert Encoder.settings_for_input({"a": "auto"}, 5) == {"a": "auto"}
    with pytest.raises(ValueError, match="cifar_stem must be true, false or auto"):
        ResNetEncoder(18, cifar_stem="auto")  # type: ignore[arg-type]
