"""Feature extraction (frozen, eval mode), pooling, and the on-disk cache."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
import torch

from selfsup.data.datamodule import ImageDataModule
from selfsup.data.synthetic import synthetic
from selfsup.encoders import ResNetEncoder, ViTEncoder
from selfsup.eval.features import (
    FeatureCache,
    _store_as,
    cached_features,
    extract_features,
    pool_feature,
    resolve_token_pool,
)
from tests.conftest import test_datamodule


def _datamodule() -> ImageDataModule:
    return test_datamodule(
        train=partial(synthetic, 12, 16, seed=1),
        test=partial(synthetic, 8, 16, seed=2),
        image_size=16,
        batch_size=5,
    )


def test_pooling_rules() -> None:
    maps = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert pool_feature(maps, 1).shape == (2, 3)
    assert torch.equal(pool_feature(maps, 2)[0, :4], maps[0, 0].view(2, 2, 2, 2).mean(dim=(1, 3)).flatten())
    tokens = torch.randn(2, 5, 8)
    assert torch.equal(pool_feature(tokens, token_pool="cls"), tokens[:, 0])
    assert torch.allclose(pool_feature(tokens, token_pool="mean"), tokens[:, 1:].mean(1))


def test_extraction_is_frozen_and_restores_the_mode() -> None:
    encoder = ResNetEncoder(18, cifar_stem=True).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = extract_features(
        encoder, _datamodule(), "train", ["stage2", "pooled"], grids={"stage2": 2, "pooled": 1}
    )
    assert features.features["stage2"].shape == (12, 128 * 4) and features.features["pooled"].shape == (
        12,
        512,
    )
    assert features.labels.tolist() == synthetic(12, 16, seed=1).labels.tolist()
    assert encoder.training
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed (BatchNorm statistics must not update)"


def test_cache_reuses_features_and_a_changed_encoder_invalidates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, dm, encoder = FeatureCache(tmp_path), _datamodule(), ResNetEncoder(18, cifar_stem=True)
    first, hit = cached_features(cache, encoder, "weights-a", dm, "train", ["pooled"])
    assert not hit

    calls = []
    original = ResNetEncoder.forward_features
    monkeypatch.setattr(
        ResNetEncoder, "forward_features", lambda self, *a: calls.append(1) or original(self, *a)
    )
    second, hit = cached_features(cache, encoder, "weights-a", dm, "train", ["pooled"])
    assert hit and not calls, "a cache hit runs no encoder forward"
    assert torch.equal(first.features["pooled"], second.features["pooled"])

    _, hit = cached_features(cache, encoder, "weights-b", dm, "train", ["pooled"])
    assert not hit and calls, "different encoder weights must not reuse the features"
    _, hit = cached_features(cache, encoder, "weights-a", dm, "test", ["pooled"])
    assert not hit, "different images must not reuse the features"


def test_cache_is_per_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, dm, encoder = FeatureCache(tmp_path), _datamodule(), ResNetEncoder(18, cifar_stem=True)
    both, _ = cached_features(
        cache, encoder, "w", dm, "train", ["stage2", "pooled"], {"stage2": 2, "pooled": 1}
    )
    requested: list[list[str]] = []
    original = ResNetEncoder.forward_features
    monkeypatch.setattr(
        ResNetEncoder,
        "forward_features",
        lambda self, x, layers, token_pool=None: requested.append(list(layers)) or original(self, x, layers),
    )
    subset, hit = cached_features(cache, encoder, "w", dm, "train", ["pooled"], {"pooled": 1})
    assert hit and not requested, "a subset of cached layers is read back"
    assert torch.equal(subset.features["pooled"], both.features["pooled"])
    mixed, hit = cached_features(
        cache, encoder, "w", dm, "train", ["stage1", "pooled"], {"stage1": 4, "pooled": 1}
    )
    assert not hit and {tuple(r) for r in requested} == {("stage1",)}, "only the missing layer is extracted"
    assert torch.equal(mixed.features["pooled"], both.features["pooled"]) and mixed.features[
        "stage1"
    ].shape == (12, 64 * 16)
    assert torch.equal(mixed.labels, both.labels)


def _vit(pool: str) -> ViTEncoder:
    return ViTEncoder(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, pool=pool)


def test_token_pool_applies_to_a_vits_pooled_output_too() -> None:
    dm, encoder = _datamodule(), _vit("cls")
    images = dm.to_device(next(iter(dm.labeled_dataloader("train", augment=False))), "cpu")["image"]
    with torch.no_grad():
        raw = encoder.blocks(encoder.add_class_token(encoder.embed_patches(images)))
        tokens = encoder.norm(raw)
    own = extract_features(encoder, dm, "train", ["pooled"], dtype=torch.float32)
    mean = extract_features(encoder, dm, "train", ["pooled"], token_pool="mean", dtype=torch.float32)
    assert resolve_token_pool(encoder, None) == "cls" and resolve_token_pool(_vit("mean"), None) == "mean"
    assert torch.allclose(own.features["pooled"][:5], tokens[:, 0], atol=1e-5)
    # MAE's fc_norm(mean): the mean patch token, then the final LayerNorm
    assert torch.allclose(mean.features["pooled"][:5], encoder.norm(raw[:, 1:].mean(1)), atol=1e-5)
    assert encoder.token_pool == "cls", "asking for another pooling does not change the encoder"
    assert torch.allclose(encoder.eval()(images), tokens[:, 0], atol=1e-5)


def test_a_vits_pool_setting_is_part_of_the_cache_key(tmp_path: Path) -> None:
    cache, dm = FeatureCache(tmp_path), _datamodule()
    cached_features(cache, _vit("cls"), "w", dm, "train", ["pooled"])
    _, hit = cached_features(cache, _vit("mean"), "w", dm, "train", ["pooled"])
    assert not hit, "mean-token features must not be served for class-token ones"
    _, hit = cached_features(cache, _vit("cls"), "w", dm, "train", ["pooled"], token_pool="mean")
    assert hit, "the same pooling, asked for explicitly, is the same features"


def test_features_too_large_for_float16_are_kept_in_float32() -> None:
    earlier = [torch.ones(2, 3, dtype=torch.float16)]
    stored = _store_as(torch.full((2, 3), 1e6), earlier, torch.float16, "stage4")
    assert stored.dtype == torch.float32 and stored[0, 0] == 1e6
    assert earlier[0].dtype == torch.float32, "earlier chunks are converted so the layer concatenates"
    assert _store_as(torch.ones(2, 3), earlier, torch.float16, "stage4").dtype == torch.float32
    assert _store_as(torch.ones(2, 3), [], torch.float16, "stem").dtype == torch.float16
    with pytest.raises(RuntimeError, match=r"non-finite .* layer 'stem'"):
        _store_as(torch.tensor([[float("nan")]]), [], torch.float16, "stem")


@pytest.mark.parametrize("token_pool", ["cls", "mean"])
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_no_probed_layer_is_constant_across_images(family: str, token_pool: str) -> None:
    """Every layer a probe can read varies with the image.

    A ViT's class token at ``patch_embed`` is the learned embedding alone, the same for every image:
    probed with class-token pooling, it would report chance accuracy as a layer's result.
    """
    encoder = ResNetEncoder(18, cifar_stem=True) if family == "resnet" else _vit(token_pool)
    layers = [*encoder.stage_names, "pooled"]
    features = extract_features(
        encoder, _datamodule(), "train", layers, token_pool=token_pool, dtype=torch.float32
    )
    for layer in layers:
        spread = features.features[layer].std(dim=0).max()
        assert spread > 1e-4, f"{family} layer {layer} ({token_pool} pooling) is the same for every image"


def test_extraction_reports_progress_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    """Not a terminal: a start line, a line per tenth of the batches, an end line, named as asked."""
    caplog.set_level(logging.INFO, logger="selfsup.progress")
    encoder = ResNetEncoder(18, cifar_stem=True)
    extract_features(encoder, _datamodule(), "train", ["pooled"], description="features: mine / train")
    lines = [r.getMessage() for r in caplog.records if r.name == "selfsup.progress"]
    assert lines[0] == "features: mine / train: started (3 batches)"  # 12 images, batches of 5
    assert lines[-1].startswith("features: mine / train: done in ")
