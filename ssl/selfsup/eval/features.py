"""Frozen-encoder features: extraction in eval mode without gradients, pooling, and an on-disk cache.

Features are extracted once per (encoder weights, images, preprocessing, layers, pooling) and stored
as safetensors under the cache folder; every later probe of the same encoder on the same data reads
them back in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from selfsup import progress
from selfsup.atomic import atomic_write
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders.base import Encoder, feature_shapes
from selfsup.modes import evaluating

log = logging.getLogger(__name__)

# Part of every cache key: raise it when extraction or pooling changes, so that old files are not reused.
FEATURES_VERSION = 4  # 4: a ViT's mean pool normalizes after averaging (MAE's fc_norm)


@dataclass
class FeatureSet:
    """Features of one labeled split.

    Attributes:
        features: layer name -> (N, D), float16 by default (half the memory; probes and kNN compute
            in float32 batch by batch).
        labels: (N,) long class indices.
        indices: (N,) positions of the images in their source (``source.name(i)`` says which file);
            unreadable images are skipped, so they need not be 0..N-1.
    """

    features: dict[str, Tensor]
    labels: Tensor
    indices: Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def auto_grid(channels: int, spatial: int, target_dim: int = 9216) -> int:
    """The pooling grid that leaves about ``target_dim`` features of a (channels, spatial, spatial) map.

    Goyal et al. (2019) pool each ResNet-50 stage to about 9k dimensions (conv1 64x12x12, res2 256x6x6,
    res3 512x4x4, res4 1024x3x3, res5 2048x2x2): the grid is ``round(sqrt(target_dim / channels))``,
    and never finer than the map itself, which scales the rule to other encoders and image sizes.
    """
    return max(1, min(spatial, round(math.sqrt(target_dim / channels))))


def probe_grids(
    encoder: Encoder, image_size: int, layers: Sequence[str], pool_grid: int | str, target_dim: int = 9216
) -> dict[str, int]:
    """Pooling grid per layer: ``pool_grid`` for every map, ``auto`` for :func:`auto_grid`'s rule, or
    ``full`` for each map's own size (no pooling: RotNet's classifiers read the whole block-2 map).

    Token and vector features are not pooled spatially; their grid is reported as 1.
    """
    if pool_grid not in ("auto", "full"):
        return dict.fromkeys(layers, int(pool_grid))
    shapes = feature_shapes(encoder, image_size, layers)
    return {
        layer: (shape[1] if pool_grid == "full" else auto_grid(shape[0], shape[1], target_dim))
        if len(shape) == 3
        else 1
        for layer, shape in shapes.items()
    }


def pool_feature(
    feature: Tensor, grid: int = 1, token_pool: str = "cls", num_prefix_tokens: int = 1
) -> Tensor:
    """Flatten one intermediate feature to a vector per image.

    Args:
        feature: (B, C, h, w) map, (B, T, D) tokens or (B, D) vector.
        grid: maps are average-pooled to ``grid x grid`` cells (adaptive, as in Goyal et al. 2019).
        token_pool: tokens are reduced to the class token (``cls``) or the mean of the others (``mean``).
        num_prefix_tokens: class (and register) tokens at the start of a token sequence.

    Returns:
        (B, C * grid * grid) for maps, (B, D) for tokens and vectors.
    """
    if feature.ndim == 4:
        return F.adaptive_avg_pool2d(feature, grid).flatten(1)
    if feature.ndim == 3:
        if token_pool == "cls":
            return feature[:, 0]
        if token_pool == "mean":
            return feature[:, num_prefix_tokens:].mean(dim=1)
        raise ValueError(f"token_pool must be 'cls' or 'mean', got {token_pool!r}")
    if feature.ndim == 2:
        return feature
    raise ValueError(f"cannot pool a feature of shape {tuple(feature.shape)}")


def resolve_token_pool(encoder: Encoder, token_pool: str | None) -> str:
    """The token pooling of a probe: ``token_pool``, or with None the encoder's own (a ViT's ``pool``)."""
    return token_pool or encoder.token_pool or "cls"


@torch.inference_mode()
def extract_features(
    encoder: Encoder,
    datamodule: ImageDataModule,
    split: str,
    layers: Sequence[str],
    grids: Mapping[str, int] | int = 1,
    token_pool: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    description: str | None = None,
) -> FeatureSet:
    """Pooled features of every image of a labeled split, with the encoder frozen in eval mode.

    Args:
        encoder: any encoder, run in eval mode; its mode is restored afterwards.
        datamodule: gives the split's centre-cropped loader and the device-side normalization.
        split: ``train`` or ``test``.
        layers: feature names (``encoder.stage_names`` or ``pooled``).
        grids: pooling grid per layer, or one for all.
        token_pool: ``cls`` or ``mean`` for token features (``pooled`` included); None: the encoder's own.
        device: where the encoder runs.
        batch_size: images per forward pass (default: the datamodule's).
        dtype: storage type of the returned features.
        description: what the progress display calls this extraction (default ``features: <split>``).
    """
    device = torch.device(device)
    encoder.to(device)
    per_layer: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    token_pool = resolve_token_pool(encoder, token_pool)
    loader = datamodule.labeled_dataloader(split, augment=False, batch_size=batch_size)
    description = description or f"features: {split}"
    with evaluating(encoder), progress.task(description, len(loader), "batches") as advance:
        for batch in loader:
            advance()
            if batch["image"].shape[0] == 0:
                continue
            batch = datamodule.to_device(batch, device)
            maps = encoder.forward_features(batch["image"], layers, token_pool)
            for name in layers:
                grid = grids if isinstance(grids, int) else grids[name]
                pooled = pool_feature(maps[name], grid, encoder.layer_token_pool(name, token_pool), prefix)
                per_layer[name].append(_store_as(pooled, per_layer[name], dtype, name).cpu())
            labels.append(batch["label"].cpu())
            indices.append(batch["index"].cpu())
    if not labels:
        raise RuntimeError(f"no readable images in the '{split}' split")
    return FeatureSet(
        {name: torch.cat(chunks) for name, chunks in per_layer.items()}, torch.cat(labels), torch.cat(indices)
    )


def _store_as(pooled: Tensor, earlier: list[Tensor], dtype: torch.dtype, name: str) -> Tensor:
    """``pooled`` (B, D) in the storage ``dtype``, or float32 for a layer whose values exceed its range.

    Non-finite features mean a broken encoder and stop the extraction. Finite values too large for
    float16 (possible in a deep, untrained network) would turn into inf: the layer is kept in float32
    instead, its earlier chunks converted in place (losslessly, they were in range).
    """
    if not torch.isfinite(pooled).all():
        raise RuntimeError(f"the encoder produced non-finite (nan or inf) features at layer '{name}'")
    current = earlier[0].dtype if earlier else dtype
    if current != torch.float32 and pooled.abs().amax() > torch.finfo(current).max:
        log.warning("layer '%s': features exceed the %s range; kept in float32", name, current)
        earlier[:] = [chunk.float() for chunk in earlier]
        current = torch.float32
    return pooled.to(current)


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines extracted features."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureCache:
    """One layer's features per file, ``<folder>/<key>.safetensors``, written atomically.

    A file per layer lets a later probe of any subset of layers reuse what earlier ones extracted.

    Args:
        folder: where the files go, or None to disable caching.
    """

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else None

    def path(self, key: str) -> Path | None:
        return self.folder / f"{key}.safetensors" if self.folder is not None else None

    def load(self, key: str) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """(features (N, D), labels (N,), indices (N,) or None) stored under ``key``, or None."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        tensors = load_file(str(path))
        return tensors["features"], tensors["labels"], tensors.get("indices")

    def store(
        self,
        key: str,
        features: Tensor,
        labels: Tensor,
        indices: Tensor | None,
        description: Mapping[str, Any],
    ) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
        if indices is not None:
            tensors["indices"] = indices.contiguous()
        metadata = {"description": json.dumps(description, default=str)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def cached_features(
    cache: FeatureCache,
    encoder: Encoder,
    encoder_id: str,
    datamodule: ImageDataModule,
    split: str,
    layers: Sequence[str],
    grids: Mapping[str, int] | int = 1,
    token_pool: str | None = None,
    device: torch.device | str = "cpu",
    name: str | None = None,
) -> tuple[FeatureSet, bool]:
    """Features from the cache where present; the missing layers extracted in one pass and stored.

    Args:
        encoder_id: identifies the encoder's weights (the export's sha256); a changed encoder gets
            new keys, so stale features are never reused. The images (the source's fingerprint) and
            the preprocessing are part of every key too.
        name: the encoder's label in progress lines (default: the start of ``encoder_id``).

    Returns:
        The features, and whether every layer came from the cache.
    """
    token_pool = resolve_token_pool(encoder, token_pool)
    common = {
        "version": FEATURES_VERSION,
        "encoder": encoder_id,
        "data": datamodule.source(split).fingerprint(),
        "split": split,
        "image_size": datamodule.image_size,
        "crop_fraction": datamodule.eval_crop_fraction,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "token_pool": token_pool,
        "dtype": "float16",
    }
    descriptions = {
        layer: {**common, "layer": layer, "grid": grids if isinstance(grids, int) else grids[layer]}
        for layer in layers
    }
    found = {layer: cache.load(cache_key(d)) for layer, d in descriptions.items()}
    missing = [layer for layer, hit in found.items() if hit is None]
    features: dict[str, Tensor] = {}
    labels: Tensor | None = None
    indices: Tensor | None = None
    if missing:
        description = f"features: {name or encoder_id[:12]} / {split}"
        extracted = extract_features(
            encoder, datamodule, split, missing, grids, token_pool, device, description=description
        )
        labels, indices = extracted.labels, extracted.indices
        for layer in missing:
            features[layer] = extracted.features[layer]
            cache.store(cache_key(descriptions[layer]), features[layer], labels, indices, descriptions[layer])
    for layer, hit in found.items():
        if hit is not None:
            features[layer], labels, indices = hit
    assert labels is not None
    if missing and len(missing) < len(layers):
        log.info(
            "features for %s/%s: %s read from the cache, %s extracted",
            encoder_id[:12],
            split,
            sorted(set(layers) - set(missing)),
            missing,
        )
    return FeatureSet({layer: features[layer] for layer in layers}, labels, indices), not missing
