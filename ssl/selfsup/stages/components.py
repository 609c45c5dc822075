"""Building the run's objects from the composed config, each checked before any training starts."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from selfsup.config import auto_num_workers, build, check_data, select, usable_cores
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError, DataError
from selfsup.tasks.base import PretextTask
from selfsup.training.optim import OptimSettings

log = logging.getLogger(__name__)


def setup_runtime(cfg: DictConfig) -> None:
    """Seed every RNG (workers included) and set the thread count."""
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)


def build_encoder(cfg: DictConfig, check_image_size: bool = True) -> Encoder:
    """``cfg.encoder``; checked against ``cfg.data.image_size`` unless a task decides what it sees."""
    encoder = build("encoder", cfg.encoder)
    if not isinstance(encoder, Encoder):
        raise ConfigError("encoder", f"_target_ must build a selfsup Encoder, got {type(encoder).__name__}")
    if check_image_size:
        try:
            encoder.check_image_size(int(select(cfg, "data.image_size")))
        except ValueError as e:
            raise ConfigError("data.image_size", str(e)) from None
    return encoder


def build_datamodule(cfg: DictConfig, splits: Sequence[str], key: str = "data") -> ImageDataModule:
    """``cfg[key]`` with the given splits opened (folders scanned, archives indexed) and checked.

    ``key`` is ``data`` for the pretraining data, or ``downstream`` for another labeled set to evaluate on.
    """
    check_data(cfg, key)
    datamodule = build(key, cfg[key], num_workers=resolve_num_workers(select(cfg, f"{key}.num_workers")))
    for split in splits:
        if not datamodule.has(split):
            raise ConfigError(
                f"{key}.{split}", f"this stage needs '{split}' images, but {key}.{split} is null"
            )
        try:
            datamodule.source(split)
        except DataError as e:
            raise ConfigError(f"{key}.{split}", str(e)) from None
    return datamodule


_logged_workers: set[int] = set()


def resolve_num_workers(value: int | str) -> int:
    """``data.num_workers``: a number as given, or ``auto`` for :func:`selfsup.config.auto_num_workers`.

    What ``auto`` chose is logged once per process.
    """
    if value != "auto":
        return int(value)
    cores = usable_cores()
    workers = auto_num_workers(cores)
    if workers not in _logged_workers:
        _logged_workers.add(workers)
        log.info("data.num_workers=auto: %d decoding workers (%d usable cores)", workers, cores)
    return workers


def build_task(cfg: DictConfig, encoder: Encoder) -> PretextTask:
    """``cfg.task`` around ``encoder``, with the optimizer settings and schedule, checked against the image size."""
    try:
        optim = OptimSettings.from_config(build("optim", cfg.optim, _convert_="all"))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("optim", f"is not a valid optimizer config: {e}") from None
    schedule = build("schedule", cfg.schedule) if cfg.get("schedule") is not None else None
    make_task = build(
        "task", cfg.task, _partial_=True, _convert_="all"
    )  # plain lists: checkpoints load weights_only
    try:
        task = make_task(encoder=encoder, optim=optim, schedule=schedule)
    except (TypeError, ValueError) as e:
        raise ConfigError("task", f"cannot build {cfg.task.get('_target_')}: {e}") from None
    if not isinstance(task, PretextTask):
        raise ConfigError("task", f"_target_ must build a PretextTask, got {type(task).__name__}")
    try:
        task.check_input(int(cfg.data.image_size))
    except ValueError as e:
        raise ConfigError("data.image_size", f"{e} (task {cfg.task._target_})") from None
    return task


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) is the first GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
