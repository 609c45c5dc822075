"""Frozen-encoder evaluation: probes (one or many layers; linear, MLP or conv heads) and kNN.

Features of each exported encoder are extracted once per (weights, images, preprocessing, layers,
pooling), cached on disk, and shared by the probes of every seed and by kNN.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from selfsup import progress
from selfsup.config import build, check_eval_config, require_encoders
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders import export
from selfsup.encoders.base import Encoder, feature_shapes
from selfsup.errors import ConfigError, NonFiniteError
from selfsup.eval.augmented_probe import AugmentedProbe, dims_of
from selfsup.eval.features import FeatureCache, FeatureSet, cached_features, probe_grids, resolve_token_pool
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear_probe import ScheduleFactory, fit_linear_probes
from selfsup.eval.probe_heads import ProbeHead
from selfsup.eval.results import EncoderProbe, FrozenEval, KnnResults, LayerResult, ProbeResults
from selfsup.eval.stats import SeedStats
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, resolve_device, setup_runtime

log = logging.getLogger(__name__)


def resolve_layers(
    requested: str | Sequence[str], encoder: Encoder, key: str = "eval.linear_probe.layers"
) -> list[str]:
    """``all``: every stage plus ``pooled``; ``default``: the encoder's :attr:`~Encoder.probe_layers`.

    Names are checked against the encoder.
    """
    if requested == "all":
        layers = [*encoder.stage_names, "pooled"]
    elif requested == "default":
        layers = list(encoder.probe_layers)
    else:
        layers = list(requested)
    try:
        encoder.check_layers(layers)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
    return layers


def evaluate_frozen(
    encoders: Mapping[str, str | Path],
    datamodule: ImageDataModule,
    eval_cfg: DictConfig,
    cache_dir: str | Path | None,
) -> tuple[FrozenEval, dict[str, dict[str, FeatureSet]]]:
    """Linear probes and kNN of each exported encoder on ``datamodule``'s labeled splits.

    Probes and kNN learn from ``train``, are scored on ``val`` (when the data has one: it chooses the
    best layer) and on ``test`` (reported only).

    Args:
        encoders: label -> export folder.
        datamodule: with labeled ``train`` and ``test`` splits (its own classes and image size).
        eval_cfg: ``eval``; its ``linear_probe`` and ``knn`` sections each run when present.
        cache_dir: where feature caches live (None: no caching).

    Returns:
        The results (probes: per encoder, per layer, the accuracy over seeds; kNN: per encoder, top-1
        per k; seconds per part), and each encoder's features per split for further use (plots).
    """
    probe_cfg, knn_cfg = eval_cfg.get("linear_probe"), eval_cfg.get("knn")
    # Features are extracted once for both; the probe's settings say how, kNN's when it runs alone.
    feature_cfg = probe_cfg if probe_cfg is not None else knn_cfg
    use_cache = cache_dir is not None and feature_cfg is not None and bool(feature_cfg.cache)
    cache = FeatureCache(Path(cache_dir) / "features" if use_cache and cache_dir is not None else None)
    num_classes = len(datamodule.classes())
    augmented = probe_cfg is not None and probe_cfg.mode == "augmented"
    knn_layers = [knn_cfg.layer] if knn_cfg is not None else []
    timing: dict[str, float] = {}
    features: dict[str, dict[str, FeatureSet]] = {}
    probes: dict[str, EncoderProbe] = {}
    knn_scores: dict[str, dict[int, float]] = {}
    knn_val: dict[str, dict[int, float]] = {}
    for label, path in encoders.items():
        encoder = export.load(path)
        layers = resolve_layers(probe_cfg.layers, encoder) if probe_cfg is not None else []
        if knn_cfg is not None:
            resolve_layers(knn_layers, encoder, key="eval.knn.layer")
        every_layer = list(dict.fromkeys([*layers, *knn_layers]))
        if probe_cfg is not None:
            grids = probe_grids(
                encoder, datamodule.image_size, every_layer, probe_cfg.pool_grid, int(probe_cfg.target_dim)
            )
        else:  # kNN alone: feature maps are pooled to 1 x 1
            grids = probe_grids(encoder, datamodule.image_size, every_layer, 1)
        if probe_cfg is not None and probe_cfg.head == "conv":
            _require_maps(encoder, datamodule.image_size, layers)
        wanted = list(dict.fromkeys([*([] if augmented else layers), *knn_layers]))
        started = time.perf_counter()
        if wanted:
            assert feature_cfg is not None
            features[label] = _features(encoder, label, path, datamodule, wanted, grids, feature_cfg, cache)
            timing[f"{label}_features_s"] = round(time.perf_counter() - started, 2)
        if probe_cfg is not None:
            started = time.perf_counter()
            if augmented:
                probes[label] = _augmented_probe(
                    encoder, label, datamodule, layers, grids, num_classes, probe_cfg
                )
            else:
                probes[label] = _probe(label, features[label], layers, grids, num_classes, probe_cfg)
            timing[f"{label}_probes_s"] = round(time.perf_counter() - started, 2)
        if knn_cfg is not None:
            started = time.perf_counter()
            sets, layer = features[label], knn_cfg.layer
            train = sets["train"]
            for split, scores in (("val", knn_val), ("test", knn_scores)):
                if split not in sets:
                    continue
                queries = sets[split]
                with progress.task(
                    f"kNN: {label} / {layer} / {split}", len(queries), f"{split} images"
                ) as advance:
                    accuracy = knn_accuracy(
                        train.features[layer], train.labels, queries.features[layer], queries.labels,
                        num_classes, list(knn_cfg.ks), float(knn_cfg.temperature), on_chunk=advance,
                    )  # fmt: skip
                scores[label] = {int(k): round(a, 2) for k, a in accuracy.items()}
            timing[f"{label}_knn_s"] = round(time.perf_counter() - started, 2)
    results = FrozenEval(
        num_classes=num_classes,
        probe=None
        if probe_cfg is None
        else ProbeResults(
            "augmented" if augmented else "cached",
            tuple(int(s) for s in probe_cfg.seeds),
            probes,
            head=str(probe_cfg.head),
        ),
        knn=None
        if knn_cfg is None
        else KnnResults(
            str(knn_cfg.layer),
            tuple(int(k) for k in knn_cfg.ks),
            float(knn_cfg.temperature),
            knn_scores,
            val=knn_val,
        ),
        timing=timing,
    )
    return results, features


def probe_head(probe_cfg: DictConfig) -> ProbeHead:
    """The classifier each layer gets, from ``eval.linear_probe.head``, ``head_hidden_dim``, ``head_channels``."""
    hidden = probe_cfg.head_hidden_dim
    return ProbeHead(
        str(probe_cfg.head), None if hidden is None else int(hidden), int(probe_cfg.head_channels)
    )


def probe_schedule_factory(probe_cfg: DictConfig) -> ScheduleFactory:
    """``eval.linear_probe.schedule`` built: ``factory(optimizer, total_steps)``."""
    return build("eval.linear_probe.schedule", probe_cfg.schedule)


def _require_maps(encoder: Encoder, image_size: int, layers: list[str]) -> None:
    """The conv head reads a spatial map; refuse layers that are vectors (pooled outputs, ViT tokens)."""
    shapes = feature_shapes(encoder, image_size, layers)
    flat = [layer for layer, shape in shapes.items() if len(shape) != 3]
    if flat:
        raise ConfigError(
            "eval.linear_probe.head",
            f"the conv head needs a feature map, but {', '.join(flat)} of {type(encoder).__name__} "
            "is a vector (a pooled output or tokens); probe those with head=mlp or head=linear",
        )


def _features(
    encoder: Encoder,
    label: str,
    path: str | Path,
    datamodule: ImageDataModule,
    layers: list[str],
    grids: dict[str, int],
    feature_cfg: DictConfig,
    cache: FeatureCache,
) -> dict[str, FeatureSet]:
    """Features of one exported encoder for each labeled split (train, val if any, test), cached.

    ``feature_cfg`` (``eval.linear_probe`` or ``eval.knn``) brings ``token_pool`` and ``device``.
    """
    token_pool = feature_cfg.token_pool
    device = resolve_device(feature_cfg.device)
    weights_id = export.identity(path)
    sets: dict[str, FeatureSet] = {}
    hits = []
    for split in [s for s in ("train", "val", "test") if datamodule.has(s)]:
        try:
            features, hit = cached_features(
                cache, encoder, weights_id, datamodule, split, layers, grids, token_pool, device, label
            )
        except RuntimeError as e:  # eval.features refuses NaN/inf features with a RuntimeError
            if "non-finite" not in str(e):
                raise
            raise NonFiniteError(f"{e} (encoder {path}, {split} images)") from None
        sets[split] = features
        hits.append(hit)
    log.info("%s: features %s", path, "read from the cache" if all(hits) else "extracted")
    return sets


def _probe(
    label: str,
    sets: dict[str, FeatureSet],
    layers: list[str],
    grids: dict[str, int],
    num_classes: int,
    probe_cfg: DictConfig,
) -> EncoderProbe:
    """One multi-head probe per seed (every layer at once); the accuracy over seeds per layer.

    Trained on ``sets["train"]``, scored on ``sets["test"]`` and, when present, ``sets["val"]``.
    """
    train, test, val = sets["train"], sets["test"], sets.get("val")
    train_layers = FeatureSet({layer: train.features[layer] for layer in layers}, train.labels)
    device = resolve_device(probe_cfg.device)

    epochs = int(probe_cfg.epochs)
    what = f"{len(layers)} layers" if len(layers) > 1 else layers[0]
    schedule = probe_schedule_factory(probe_cfg)
    hidden = probe_cfg.head_hidden_dim

    def one_seed(seed: int) -> dict[str, float]:
        with progress.task(f"probes: {label} / {what} / seed {seed}", epochs, "epochs") as advance:
            return fit_linear_probes(
                train_layers,
                test,
                num_classes,
                epochs=epochs,
                batch_size=int(probe_cfg.batch_size),
                lr=float(probe_cfg.lr),
                weight_decay=float(probe_cfg.weight_decay),
                optimizer=str(probe_cfg.optimizer),
                seed=seed,
                device=device,
                on_epoch=advance,
                val=val,
                grids=grids,
                head=str(probe_cfg.head),
                head_hidden_dim=None if hidden is None else int(hidden),
                head_channels=int(probe_cfg.head_channels),
                schedule=schedule,
            )

    runs = [one_seed(int(seed)) for seed in probe_cfg.seeds]
    return _encoder_probe(
        runs, layers, {layer: int(train.features[layer].shape[1]) for layer in layers}, grids
    )


def _encoder_probe(
    runs: list[dict[str, float]], layers: list[str], dims: dict[str, int], grids: dict[str, int]
) -> EncoderProbe:
    """Per layer, the test (``<layer>``) and validation (``val/<layer>``) top-1 of each seed's run, summarized."""
    return EncoderProbe(
        {
            layer: LayerResult(
                SeedStats.of([run[layer] for run in runs]),
                dims[layer],
                grids[layer],
                SeedStats.of([run[f"val/{layer}"] for run in runs]) if f"val/{layer}" in runs[0] else None,
            )
            for layer in layers
        }
    )


def _augmented_probe(
    encoder: Encoder,
    label: str,
    datamodule: ImageDataModule,
    layers: list[str],
    grids: dict[str, int],
    num_classes: int,
    probe_cfg: DictConfig,
) -> EncoderProbe:
    """Probes trained on augmented images through the frozen encoder, one Lightning run per seed."""
    token_pool = resolve_token_pool(encoder, probe_cfg.token_pool)
    dims = dims_of(encoder, datamodule.image_size, layers, grids, token_pool)
    runs = []
    seeds = list(probe_cfg.seeds)
    with progress.task(f"probes (augmented): {label}", len(seeds), "seeds") as advance:
        for seed in seeds:
            runs.append(
                _augmented_run(encoder, datamodule, layers, dims, grids, num_classes, probe_cfg, seed)
            )
            advance()
    return _encoder_probe(runs, layers, dims, grids)


def _augmented_run(
    encoder: Encoder,
    datamodule: ImageDataModule,
    layers: list[str],
    dims: dict[str, int],
    grids: dict[str, int],
    num_classes: int,
    probe_cfg: DictConfig,
    seed: int,
) -> dict[str, float]:
    """One seed's augmented probe: test top-1 per layer, and ``val/<layer>`` when there is validation data."""
    token_pool = resolve_token_pool(encoder, probe_cfg.token_pool)
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
        str(probe_cfg.optimizer),
        probe_head(probe_cfg),
        probe_schedule_factory(probe_cfg),
    )
    device = resolve_device(probe_cfg.device)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_epochs=int(probe_cfg.epochs), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    train = datamodule.labeled_dataloader("train", augment=True, batch_size=int(probe_cfg.batch_size))
    with warnings.catch_warnings():
        # The frozen encoder is in eval mode on purpose (its BatchNorm statistics must not move).
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        trainer.fit(model, train_dataloaders=train)
    scores = trainer.test(model, dataloaders=datamodule.labeled_dataloader("test"), verbose=False)[0]
    out = {layer: float(scores[f"top1/{layer}"]) for layer in layers}
    if datamodule.has("val"):
        val = trainer.test(model, dataloaders=datamodule.labeled_dataloader("val"), verbose=False)[0]
        out |= {f"val/{layer}": float(val[f"top1/{layer}"]) for layer in layers}
    return out


def check_probe(cfg: DictConfig) -> tuple[dict[str, str], ImageDataModule]:
    """Every check ``selfsup-probe`` makes before it extracts features; the encoders and the labeled data."""
    check_eval_config(cfg)
    encoders = require_encoders(
        cfg, "name at least one exported encoder, e.g. +encoders.mine=outputs/runs/<run>/encoder"
    )
    return encoders, build_datamodule(cfg, ["train", "test"])


def probe(cfg: DictConfig) -> dict[str, Any]:
    """``selfsup-probe``: linear probes and kNN of the exported encoders ``cfg.encoders`` (label -> folder).

    Returns the metrics.json sections it wrote: ``linear_probe``, ``knn`` and ``eval_timing``.
    """
    encoders, datamodule = check_probe(cfg)
    setup_runtime(cfg)
    results, _ = evaluate_frozen(encoders, datamodule, cfg.eval, cfg.paths.cache_dir)
    sections = results.sections()
    run_dir = RunDir.from_config(cfg)
    for section, values in sections.items():
        run_dir.update_metrics(section, values)
    return sections
