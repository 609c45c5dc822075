"""The Lightning Trainer from the composed config: trainer kwargs, loggers, callbacks, atomic checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from selfsup.training.checkpoint_io import AtomicCheckpointIO


def instantiate_each(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every entry of a config group holding named objects (loggers, callbacks).

    Entries set to null are skipped, so an experiment can drop one (``callbacks.progress_bar=null``).
    """
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """``cfg.trainer`` with ``cfg.logger`` and ``cfg.callbacks`` attached and checkpoints saved atomically."""
    kwargs: dict[str, Any] = {
        "logger": instantiate_each(cfg.get("logger")) or False,
        "callbacks": instantiate_each(cfg.get("callbacks")),
        "plugins": [AtomicCheckpointIO()],
        "default_root_dir": cfg.paths.run_dir,
    }
    kwargs.update(overrides)
    return instantiate(cfg.trainer, **kwargs)
