"""``selfsup-embed``: features of a dataset written to one file, and a 2-D map of them coloured by class."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from selfsup.config import check_embed_config
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders import export
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.eval.embeddings import project_2d, save_embeddings, subsample
from selfsup.eval.features import extract_features, probe_grids
from selfsup.reports import plots
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, resolve_device, setup_runtime

log = logging.getLogger(__name__)


def check_embed(cfg: DictConfig) -> tuple[ImageDataModule, Encoder]:
    """Every check ``selfsup-embed`` makes before it extracts features; the data and the encoder."""
    check_embed_config(cfg)
    datamodule = build_datamodule(cfg, [str(cfg.split)])
    encoder = export.load(Path(cfg.encoder_path))
    try:
        encoder.check_layers([str(cfg.layer)])
    except ValueError as e:
        raise ConfigError("layer", str(e)) from None
    return datamodule, encoder


def embed(cfg: DictConfig) -> dict[str, Any]:
    """Write ``<run dir>/embeddings.npz`` for ``cfg.split`` of ``cfg.data`` and, unless
    ``cfg.projection.method`` is null, ``embedding_<method>.png``."""
    datamodule, encoder = check_embed(cfg)
    split, method, layer = str(cfg.split), cfg.projection.method, str(cfg.layer)
    path = Path(cfg.encoder_path)
    setup_runtime(cfg)
    grids = probe_grids(encoder, datamodule.image_size, [layer], cfg.pool_grid)
    features = extract_features(
        encoder,
        datamodule,
        split,
        [layer],
        grids,
        cfg.token_pool,
        resolve_device(cfg.device),
        dtype=torch.float32,
        description=f"features: {path} / {split}",
    )
    source = datamodule.source(split)
    assert features.indices is not None
    names = [source.name(int(i)) for i in features.indices]
    run_dir = RunDir.from_config(cfg)
    out = save_embeddings(
        run_dir.embeddings, features.features[layer], features.labels, names, source.classes
    )
    results: dict[str, Any] = {
        "file": str(out),
        "images": len(features),
        "dim": int(features.features[layer].shape[1]),
        "layer": layer,
    }
    if method is not None:
        keep = subsample(len(features), int(cfg.projection.max_points), int(cfg.seed))
        points = project_2d(
            features.features[layer].float().numpy()[keep],
            method,
            int(cfg.seed),
            float(cfg.projection.perplexity),
        )
        title = f"{method} of {layer} features ({len(keep)} {split} images)"
        figure = plots.embedding(
            points,
            features.labels.numpy()[keep],
            source.classes,
            run_dir.embedding_map(method),
            title,
        )
        results["figure"] = str(figure)
    run_dir.update_metrics("embeddings", results)
    log.info("embeddings of %d images written to %s", len(features), out)
    return results
