"""Checks on the composed config, run before any work starts, and how objects are built from it.

Hydra already rejects unknown config options (``encoder=resnet99`` lists the available ones) and
unknown keys (``data.bsz=8``: "Key 'bsz' is not in struct"). What Hydra cannot know is which values
make sense together; those checks live here and fail with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup.errors import ConfigError, SelfsupError


def select(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key, resolving interpolations; a missing mandatory value (???) is an error."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # omegaconf raises MissingMandatoryValue or InterpolationResolutionError
        raise ConfigError(
            key, f"has no value ({type(e).__name__}: {e}); set it on the command line, e.g. {key}=..."
        ) from e


def require_positive_int(cfg: DictConfig, key: str, allow_zero: bool = False) -> int:
    value = select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        allowed = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(key, f"must be {allowed}, got {value!r}")
    return value


def require_positive_number(cfg: DictConfig, key: str) -> float:
    value = select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(key, f"must be a positive number, got {value!r}")
    return float(value)


def require_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> str:
    value = select(cfg, key)
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, f"must be one of {list(choices)}, got {value!r}")
    return value


def build(key: str, node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into a :class:`ConfigError` naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, SelfsupError):
            raise cause from None
        raise ConfigError(key, f"cannot build {node.get('_target_', 'it')}: {_first_line(cause)}") from e


def check_complete(cfg: DictConfig) -> None:
    """Every mandatory value (``???`` in the yaml) is set; the first missing one is named."""
    missing = _missing_keys(cfg, "")
    if missing:
        raise ConfigError(
            missing[0], f"is required and has no value; set it on the command line, e.g. {missing[0]}=..."
        )


def check_data(cfg: DictConfig, key: str = "data") -> None:
    """Value checks on a data config (``cfg.data`` or another one, e.g. ``cfg.downstream``)."""
    require_positive_int(cfg, f"{key}.batch_size")
    require_positive_int(cfg, f"{key}.image_size")
    require_positive_int(cfg, f"{key}.num_workers", allow_zero=True)
    require_choice(cfg, f"{key}.on_bad_image", ("skip", "error"))
    for name in (f"{key}.crop_scale", f"{key}.crop_ratio"):
        low, high = select(cfg, name)
        if not 0 < low <= high:
            raise ConfigError(name, f"must be [low, high] with 0 < low <= high, got [{low}, {high}]")


def check_training(cfg: DictConfig) -> None:
    """Value checks on the trainer and optimizer settings of a pretraining run."""
    epochs, steps = select(cfg, "trainer.max_epochs"), select(cfg, "trainer.max_steps")
    if (epochs is None or epochs <= 0) and (steps is None or steps <= 0):
        raise ConfigError(
            "trainer.max_epochs",
            f"set max_epochs or max_steps to a positive number (got {epochs} and {steps})",
        )
    require_positive_number(cfg, "optim.lr")
    require_choice(cfg, "optim.lr_scaling", ("none", "linear", "sqrt"))
    require_positive_int(cfg, "trainer.accumulate_grad_batches")
    seed = select(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")


def _missing_keys(node: Any, prefix: str) -> list[str]:
    """Dotted keys set to ``???``, found without resolving interpolations (which may point at them)."""
    if not OmegaConf.is_config(node):
        return []
    keys = node.keys() if OmegaConf.is_dict(node) else range(len(node))
    found: list[str] = []
    for key in keys:
        path = f"{prefix}{key}" if OmegaConf.is_dict(node) else f"{prefix.rstrip('.')}[{key}]"
        if OmegaConf.is_missing(node, key):
            found.append(path)
        elif not OmegaConf.is_interpolation(node, key):
            found += _missing_keys(node[key], f"{path}.")
    return found


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
