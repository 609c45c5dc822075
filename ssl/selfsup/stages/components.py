"""Building the run's objects from the composed config, each checked before any training starts."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from selfsup.config import (
    auto_num_workers,
    build,
    check_complete,
    check_data,
    check_training,
    select,
    usable_cores,
)
from selfsup.data.datamodule import ImageDataModule
from selfsup.encoders.base import AUTO, Encoder
from selfsup.errors import ConfigError, DataError
from selfsup.tasks.base import PretextTask
from selfsup.training.optim import OptimSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


def setup_runtime(cfg: DictConfig) -> None:
    """Seed every RNG (workers included) and set the thread count."""
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)


def build_encoder(cfg: DictConfig, input_size: int | None = None) -> Encoder:
    """``cfg.encoder`` for inputs of ``input_size`` px (None: ``data.image_size``), checked against them.

    ``auto`` settings (a ResNet's ``cifar_stem``, a ViT's ``image_size``) are chosen for that size by
    the encoder class (:meth:`Encoder.settings_for_input`) and logged.
    """
    size = int(select(cfg, "data.image_size")) if input_size is None else int(input_size)
    node = _encoder_for_input(cfg, size)
    encoder = build("encoder", node)
    if not isinstance(encoder, Encoder):
        raise ConfigError("encoder", f"_target_ must build a selfsup Encoder, got {type(encoder).__name__}")
    try:
        encoder.check_image_size(size)
    except ValueError as e:
        key = "data.image_size" if input_size is None else "encoder"
        raise ConfigError(key, str(e)) from None
    return encoder


def _encoder_for_input(cfg: DictConfig, input_size: int) -> DictConfig:
    """``cfg.encoder`` with its ``auto`` values chosen for ``input_size`` px inputs (each logged once)."""
    cls = _target_class(cfg, "encoder", Encoder)
    settings = _settings(cfg.encoder)
    chosen = cls.settings_for_input(dict(settings), input_size)
    for key, value in chosen.items():
        if settings.get(key) == AUTO and (key, value, input_size) not in _logged_choices:
            _logged_choices.add((key, value, input_size))
            log.info("encoder.%s=auto: %s for %d px encoder inputs", key, value, input_size)
    return OmegaConf.create(chosen)


_logged_choices: set[tuple[str, object, int]] = set()


def pretext_input_size(cfg: DictConfig) -> int:
    """The side in px of what ``cfg.task`` feeds its encoder (Jigsaw's tiles; the images by default)."""
    cls = _target_class(cfg, "task", PretextTask)
    image_size = int(select(cfg, "data.image_size"))
    try:
        return int(cls.encoder_input_size(image_size, _settings(cfg.task)))
    except ValueError as e:  # the task's settings cannot work on these images: as its constructor says
        raise ConfigError("task", f"cannot build {cfg.task._target_}: {e}") from None


def _target_class(cfg: DictConfig, key: str, base: type[T]) -> type[T]:
    """The class ``cfg[key]._target_`` names, which must be a subclass of ``base``."""
    target = cfg[key].get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as e:  # ImportError, AttributeError, ValueError: hydra raises them all
        raise ConfigError(f"{key}._target_", f"cannot import {target!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(key, f"_target_ must build a selfsup {base.__name__}, got {target}")
    return cls


def _settings(node: DictConfig) -> dict[str, Any]:
    """A config node as a plain dict, interpolations resolved."""
    return {str(k): v for k, v in OmegaConf.to_container(node, resolve=True).items()}  # type: ignore[union-attr]


def build_pretext_encoder(cfg: DictConfig) -> Encoder:
    """``cfg.encoder`` built for what ``cfg.task`` feeds it; a refusal says the task chose that size."""
    image_size, input_size = int(select(cfg, "data.image_size")), pretext_input_size(cfg)
    if input_size == image_size:
        return build_encoder(cfg)
    try:
        return build_encoder(cfg, input_size)
    except ConfigError as e:
        task = str(cfg.task._target_).rpartition(".")[2]
        raise ConfigError(
            "data.image_size",
            f"{task} feeds its encoder {input_size} px inputs on {image_size} px images, which the "
            f"encoder cannot take ({e.problem}); change data.image_size or the task's sizes",
        ) from None


@dataclass
class Pretraining:
    """What a pretraining run trains: the encoder, the data and the task around the encoder."""

    encoder: Encoder
    datamodule: ImageDataModule
    task: PretextTask


def build_pretraining(cfg: DictConfig) -> Pretraining:
    """Every check of a pretraining config, and the objects it builds (seed first: the encoder's init).

    The one place both ``selfsup-pretrain`` and a sweep's up-front check go through, so that they
    cannot refuse different things.
    """
    check_complete(cfg)
    check_training(cfg)
    encoder = build_pretext_encoder(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    return Pretraining(encoder, datamodule, build_task(cfg, encoder))


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
    # The framework owns the image size: a task that takes one gets data.image_size.
    given = {"image_size": int(cfg.data.image_size)} if _takes(cfg.task, "image_size") else {}
    try:
        task = make_task(encoder=encoder, optim=optim, schedule=schedule, **given)
    except (TypeError, ValueError) as e:
        raise ConfigError("task", f"cannot build {cfg.task.get('_target_')}: {e}") from None
    if not isinstance(task, PretextTask):
        raise ConfigError("task", f"_target_ must build a PretextTask, got {type(task).__name__}")
    try:
        task.check_input(int(cfg.data.image_size))
    except ValueError as e:
        raise ConfigError("data.image_size", f"{e} (task {cfg.task._target_})") from None
    return task


def _takes(node: DictConfig, parameter: str) -> bool:
    """Whether the class ``node._target_`` names has a constructor parameter ``parameter`` not set in ``node``."""
    if parameter in node:
        return False
    return parameter in inspect.signature(get_class(str(node.get("_target_")))).parameters


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) is the first GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
