"""Frozen-encoder evaluation: linear probes (one or many layers) and kNN, on cached features.

Features of each exported encoder are extracted once per (weights, images, preprocessing, layers,
pooling), cached on disk, and shared by the probes of every seed and by kNN.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from selfsup.config import check_complete, require_choice, require_positive_int, select
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders import export
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.eval.augmented_probe import AugmentedProbe, dims_of
from selfsup.eval.features import FeatureCache, FeatureSet, cached_features, probe_grids, resolve_token_pool
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear_probe import PROBE_OPTIMIZERS, fit_linear_probes
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, resolve_device, setup_runtime

log = logging.getLogger(__name__)


def check_eval_config(cfg: DictConfig) -> None:
    """Value checks on ``cfg.eval``'s frozen-feature sections, before any work."""
    check_complete(cfg)
    if cfg.eval.get("linear_probe") is not None:
        for key in ("epochs", "batch_size", "target_dim"):
            require_positive_int(cfg, f"eval.linear_probe.{key}")
        grid = select(cfg, "eval.linear_probe.pool_grid")
        if grid != "auto":
            require_positive_int(cfg, "eval.linear_probe.pool_grid")
        if select(cfg, "eval.linear_probe.token_pool") is not None:
            require_choice(cfg, "eval.linear_probe.token_pool", ("cls", "mean"))
        require_choice(cfg, "eval.linear_probe.mode", ("cached", "augmented"))
        require_choice(cfg, "eval.linear_probe.optimizer", PROBE_OPTIMIZERS)
        if not select(cfg, "eval.linear_probe.seeds"):
            raise ConfigError("eval.linear_probe.seeds", "needs at least one seed")
    if cfg.eval.get("knn") is not None:
        ks = select(cfg, "eval.knn.ks")
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError("eval.knn.ks", f"must be a list of positive integers, got {ks}")
        temperature = select(cfg, "eval.knn.temperature")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError("eval.knn.temperature", f"must be a positive number, got {temperature!r}")


def resolve_layers(
    requested: str | Sequence[str], encoder: Encoder, key: str = "eval.linear_probe.layers"
) -> list[str]:
    """``all`` means every stage plus ``pooled``; names are checked against the encoder."""
    layers = [*encoder.stage_names, "pooled"] if requested == "all" else list(requested)
    try:
        encoder.check_layers(layers)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
    return layers


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and range of per-seed accuracies (percent)."""
    return {
        "top1_mean": round(statistics.fmean(values), 2),
        "top1_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "top1_min": round(min(values), 2),
        "top1_max": round(max(values), 2),
        "top1": [round(v, 2) for v in values],
    }


def evaluate_frozen(
    encoders: Mapping[str, str | Path],
    datamodule: ImageDataModule,
    eval_cfg: DictConfig,
    cache_dir: str | Path | None,
) -> tuple[dict[str, Any], dict[str, tuple[FeatureSet, FeatureSet]]]:
    """Linear probes and kNN of each exported encoder on ``datamodule``'s labeled train and test splits.

    Args:
        encoders: label -> export folder.
        datamodule: with labeled ``train`` and ``test`` splits (its own classes and image size).
        eval_cfg: ``eval``; its ``linear_probe`` and ``knn`` sections each run when present.
        cache_dir: where feature caches live (None: no caching).

    Returns:
        The results (``linear_probe``: label -> layer -> accuracy summary over seeds, with ``dim`` and
        ``grid``; ``knn``: label -> ``top1_k<k>``; ``timing`` in seconds), and each encoder's train and
        test features for further use (plots).
    """
    probe_cfg, knn_cfg = eval_cfg.get("linear_probe"), eval_cfg.get("knn")
    use_cache = cache_dir is not None and (probe_cfg or knn_cfg or {}).get("cache", True)
    cache = FeatureCache(Path(cache_dir) / "features" if use_cache and cache_dir is not None else None)
    num_classes = len(datamodule.classes())
    results: dict[str, Any] = {"num_classes": num_classes, "timing": {}}
    features: dict[str, tuple[FeatureSet, FeatureSet]] = {}
    if probe_cfg is not None:
        results["linear_probe"] = {"seeds": list(probe_cfg.seeds)}
    if knn_cfg is not None:
        results["knn"] = {
            "layer": knn_cfg.layer,
            "ks": list(knn_cfg.ks),
            "temperature": float(knn_cfg.temperature),
        }
    for label, path in encoders.items():
        encoder = export.load(path)
        layers = resolve_layers(probe_cfg.layers, encoder) if probe_cfg is not None else []
        if knn_cfg is not None:
            resolve_layers([knn_cfg.layer], encoder, key="eval.knn.layer")
        augmented = probe_cfg is not None and probe_cfg.get("mode", "cached") == "augmented"
        knn_layers = [knn_cfg.layer] if knn_cfg is not None else []
        wanted = list(dict.fromkeys([*([] if augmented else layers), *knn_layers]))
        grids = probe_grids(
            encoder, datamodule.image_size, list(dict.fromkeys([*layers, *knn_layers])),
            probe_cfg.pool_grid if probe_cfg is not None else 1, int(probe_cfg.target_dim) if probe_cfg is not None else 9216,
        )  # fmt: skip
        started = time.perf_counter()
        if wanted:
            features[label] = _features(encoder, path, datamodule, wanted, grids, eval_cfg, cache)
            results["timing"][f"{label}_features_s"] = round(time.perf_counter() - started, 2)
        if probe_cfg is not None:
            started = time.perf_counter()
            results["linear_probe"]["layers"] = layers
            results["linear_probe"]["mode"] = "augmented" if augmented else "cached"
            if augmented:
                results["linear_probe"][label] = _augmented_probe(
                    encoder, datamodule, layers, grids, num_classes, probe_cfg
                )
            else:
                train, test = features[label]
                results["linear_probe"][label] = _probe(train, test, layers, grids, num_classes, probe_cfg)
            results["timing"][f"{label}_probes_s"] = round(time.perf_counter() - started, 2)
        if knn_cfg is not None:
            started = time.perf_counter()
            train, test = features[label]
            layer = knn_cfg.layer
            accuracy = knn_accuracy(
                train.features[layer], train.labels, test.features[layer], test.labels, num_classes,
                list(knn_cfg.ks), float(knn_cfg.temperature),
            )  # fmt: skip
            results["knn"][label] = {f"top1_k{k}": round(a, 2) for k, a in accuracy.items()}
            results["timing"][f"{label}_knn_s"] = round(time.perf_counter() - started, 2)
    return results, features


def _features(
    encoder: Encoder,
    path: str | Path,
    datamodule: ImageDataModule,
    layers: list[str],
    grids: dict[str, int],
    eval_cfg: DictConfig,
    cache: FeatureCache,
) -> tuple[FeatureSet, FeatureSet]:
    """Train and test features of one exported encoder, from the cache when it has them."""
    probe_cfg = eval_cfg.get("linear_probe") or {}
    token_pool = probe_cfg.get("token_pool")
    device = resolve_device(probe_cfg.get("device", "auto"))
    weights_id = export.identity(path)
    sets, hits = [], []
    for split in ("train", "test"):
        features, hit = cached_features(
            cache, encoder, weights_id, datamodule, split, layers, grids, token_pool, device
        )
        sets.append(features)
        hits.append(hit)
    log.info("%s: features %s", path, "read from the cache" if all(hits) else "extracted")
    return sets[0], sets[1]


def _probe(
    train: FeatureSet,
    test: FeatureSet,
    layers: list[str],
    grids: dict[str, int],
    num_classes: int,
    probe_cfg: DictConfig,
) -> dict[str, Any]:
    """One multi-head probe per seed (every layer at once); the accuracy summary over seeds per layer."""
    train_layers = FeatureSet({layer: train.features[layer] for layer in layers}, train.labels)
    device = resolve_device(probe_cfg.get("device"))

    def one_seed(seed: int) -> dict[str, float]:
        return fit_linear_probes(
            train_layers,
            test,
            num_classes,
            epochs=int(probe_cfg.epochs),
            batch_size=int(probe_cfg.batch_size),
            lr=float(probe_cfg.lr),
            weight_decay=float(probe_cfg.weight_decay),
            optimizer=str(probe_cfg.get("optimizer", "adamw")),
            seed=seed,
            device=device,
        )

    runs = [one_seed(int(seed)) for seed in probe_cfg.seeds]
    return {
        layer: {
            **summarize([run[layer] for run in runs]),
            "dim": int(train.features[layer].shape[1]),
            "grid": grids[layer],
        }
        for layer in layers
    }


def _augmented_probe(
    encoder: Encoder,
    datamodule: ImageDataModule,
    layers: list[str],
    grids: dict[str, int],
    num_classes: int,
    probe_cfg: DictConfig,
) -> dict[str, Any]:
    """Probes trained on augmented images through the frozen encoder, one Lightning run per seed."""
    token_pool = resolve_token_pool(encoder, probe_cfg.get("token_pool"))
    dims = dims_of(encoder, datamodule.image_size, layers, grids, token_pool)
    runs = []
    for seed in probe_cfg.seeds:
        pl.seed_everything(int(seed), workers=True, verbose=False)
        model = AugmentedProbe(
            encoder,
            dims,
            grids,
            num_classes,
            token_pool,
            float(probe_cfg.lr),
            float(probe_cfg.weight_decay),
            datamodule.prepare_batch,
            str(probe_cfg.get("optimizer", "adamw")),
        )
        device = resolve_device(probe_cfg.get("device"))
        trainer = pl.Trainer(
            accelerator=device.type, devices=1, max_epochs=int(probe_cfg.epochs), logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(
            model,
            train_dataloaders=datamodule.labeled_dataloader(
                "train", augment=True, batch_size=int(probe_cfg.batch_size)
            ),
        )
        scores = trainer.test(model, dataloaders=datamodule.labeled_dataloader("test"), verbose=False)[0]
        runs.append({layer: float(scores[f"top1/{layer}"]) for layer in layers})
    return {
        layer: {**summarize([run[layer] for run in runs]), "dim": dims[layer], "grid": grids[layer]}
        for layer in layers
    }


def probe(cfg: DictConfig) -> dict[str, Any]:
    """``selfsup-probe``: linear probes and kNN of the exported encoders ``cfg.encoders`` (label -> folder)."""
    check_eval_config(cfg)
    setup_runtime(cfg)
    encoders = dict(select(cfg, "encoders"))
    if not encoders:
        raise ConfigError(
            "encoders", "name at least one exported encoder, e.g. +encoders.mine=outputs/runs/<run>/encoder"
        )
    for label, path in encoders.items():
        if not (Path(path) / export.CONFIG_FILE).is_file():
            raise ConfigError(
                f"encoders.{label}", f"no exported encoder at {path} (expected {export.CONFIG_FILE} there)"
            )
    datamodule = build_datamodule(cfg, ["train", "test"])
    results, _ = evaluate_frozen(encoders, datamodule, cfg.eval, cfg.paths.cache_dir)
    for section in ("linear_probe", "knn"):
        if section in results:
            RunDir.default(cfg.paths.run_dir).update_metrics(section, results[section])
    RunDir.default(cfg.paths.run_dir).update_metrics("eval_timing", results["timing"])
    return results
