"""The linear-probe stage: frozen features of exported encoders, cached, then a probe per layer and seed."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from selfsup.config import check_complete, require_positive_int, select
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders import export
from selfsup.errors import ConfigError
from selfsup.eval.features import FeatureCache, FeatureSet, cached_features
from selfsup.eval.linear_probe import fit_linear_probe
from selfsup.stages.components import build_datamodule, resolve_device, setup_runtime
from selfsup.stages.run_dir import update_metrics

log = logging.getLogger(__name__)


def check_probe_config(cfg: DictConfig) -> None:
    check_complete(cfg)
    for key in ("epochs", "batch_size", "pool_grid"):
        require_positive_int(cfg, f"eval.linear_probe.{key}")
    if not select(cfg, "eval.linear_probe.seeds"):
        raise ConfigError("eval.linear_probe.seeds", "needs at least one seed")


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and range of per-seed accuracies (percent)."""
    return {
        "top1_mean": round(statistics.fmean(values), 2),
        "top1_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "top1_min": round(min(values), 2),
        "top1_max": round(max(values), 2),
        "top1": [round(v, 2) for v in values],
    }


def probe_encoders(
    encoders: Mapping[str, str | Path],
    datamodule: ImageDataModule,
    probe_cfg: DictConfig,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    """Linear-probe each exported encoder on ``datamodule``'s labeled train and test splits.

    Args:
        encoders: label -> export folder.
        datamodule: with labeled ``train`` and ``test`` splits.
        probe_cfg: ``eval.linear_probe``.
        cache_dir: where feature caches live (None: no caching).

    Returns:
        label -> layer -> accuracy summary over seeds, plus ``timing`` (seconds per encoder and step).
    """
    use_cache = cache_dir is not None and probe_cfg.get("cache", True)
    cache = FeatureCache(Path(cache_dir) / "features" if use_cache else None)  # type: ignore[arg-type]
    layers = list(probe_cfg.layers)
    num_classes = len(datamodule.source("train").classes or [])
    results: dict[str, Any] = {"layers": layers, "seeds": list(probe_cfg.seeds), "num_classes": num_classes}
    timing: dict[str, float] = {}
    for label, path in encoders.items():
        started = time.perf_counter()
        train, test = _features(path, datamodule, probe_cfg, cache)
        timing[f"{label}_features_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        results[label] = {layer: _probe_layer(train, test, layer, num_classes, probe_cfg) for layer in layers}
        timing[f"{label}_probes_s"] = round(time.perf_counter() - started, 2)
    results["timing"] = timing
    return results


def _features(
    path: str | Path, datamodule: ImageDataModule, probe_cfg: DictConfig, cache: FeatureCache
) -> tuple[FeatureSet, FeatureSet]:
    """Train and test features of one exported encoder, from the cache when it has them."""
    encoder = export.load(path)
    layers = list(probe_cfg.layers)
    try:
        encoder.check_layers(layers)
    except ValueError as e:
        raise ConfigError("eval.linear_probe.layers", str(e)) from None
    weights_id = export.read_spec(path).get("weights_sha256", str(path))
    device = resolve_device(probe_cfg.get("device"))
    grid, token_pool = int(probe_cfg.pool_grid), str(probe_cfg.token_pool)
    train, train_hit = cached_features(
        cache, encoder, weights_id, datamodule, "train", layers, grid, token_pool, device
    )
    test, test_hit = cached_features(
        cache, encoder, weights_id, datamodule, "test", layers, grid, token_pool, device
    )
    log.info("%s: features %s", path, "read from the cache" if train_hit and test_hit else "extracted")
    return train, test


def _probe_layer(
    train: FeatureSet, test: FeatureSet, layer: str, num_classes: int, probe_cfg: DictConfig
) -> dict[str, Any]:
    """One probe per seed on one layer's features; the accuracy summary over seeds."""
    accuracies = [
        fit_linear_probe(
            train.features[layer],
            train.labels,
            test.features[layer],
            test.labels,
            num_classes,
            epochs=int(probe_cfg.epochs),
            batch_size=int(probe_cfg.batch_size),
            lr=float(probe_cfg.lr),
            weight_decay=float(probe_cfg.weight_decay),
            seed=int(seed),
            device=resolve_device(probe_cfg.get("device")),
        ).test_top1
        for seed in probe_cfg.seeds
    ]
    return {**summarize(accuracies), "dim": int(train.features[layer].shape[1])}


def probe(cfg: DictConfig) -> dict[str, Any]:
    """``selfsup-probe``: linear-probe the exported encoders ``cfg.encoders`` (label -> folder)."""
    check_probe_config(cfg)
    setup_runtime(cfg)
    encoders = dict(select(cfg, "encoders"))
    for label, path in encoders.items():
        if not (Path(path) / export.CONFIG_FILE).is_file():
            raise ConfigError(
                f"encoders.{label}", f"no exported encoder at {path} (expected {export.CONFIG_FILE} there)"
            )
    datamodule = build_datamodule(cfg, ["train", "test"])
    results = probe_encoders(encoders, datamodule, cfg.eval.linear_probe, cfg.paths.cache_dir)
    update_metrics(cfg.paths.run_dir, "linear_probe", results)
    return results
