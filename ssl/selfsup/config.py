"""Checks on the composed config, run before any work starts, and how objects are built from it.

Hydra already rejects unknown config options (``encoder=resnet99`` lists the available ones) and
unknown keys (``data.bsz=8``: "Key 'bsz' is not in struct"). What Hydra cannot know is which values
make sense together; those checks live here and fail with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup.data.transforms import CROPS
from selfsup.errors import ConfigError, SelfsupError

if TYPE_CHECKING:
    from selfsup.encoders.base import Encoder

FINETUNE = "eval.finetune"

AUTO_WORKERS_CAP = 8
"""``data.num_workers=auto`` starts at most this many decoding processes."""


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


def require_number(cfg: DictConfig, key: str, allowed: str, ok: Callable[[float], bool]) -> float:
    """The number at ``key``, for which ``ok`` holds; else a ConfigError saying what is ``allowed``.

    Example: ``require_number(cfg, "eval.finetune.label_smoothing", "in [0, 1)", lambda v: 0 <= v < 1)``.
    """
    value = select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ConfigError(key, f"must be {allowed}, got {value!r}")
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
    workers = select(cfg, f"{key}.num_workers")
    if workers != "auto":
        require_positive_int(cfg, f"{key}.num_workers", allow_zero=True)
    require_choice(cfg, f"{key}.on_bad_image", ("skip", "error"))
    for cap in ("max_images", "max_train_images", "max_test_images"):
        if select(cfg, f"{key}.{cap}") is not None:
            require_positive_int(cfg, f"{key}.{cap}")
    fraction = select(cfg, f"{key}.val_fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1
    ):
        raise ConfigError(f"{key}.val_fraction", f"must be a number in [0, 1), got {fraction!r}")
    if select(cfg, f"{key}.subset_seed") is not None:
        require_positive_int(cfg, f"{key}.subset_seed", allow_zero=True)
    require_choice(cfg, f"{key}.crop", CROPS)
    require_positive_int(cfg, f"{key}.crop_padding", allow_zero=True)
    check_data_path(cfg, key)
    for name in (f"{key}.crop_scale", f"{key}.crop_ratio"):
        low, high = select(cfg, name)
        if not 0 < low <= high:
            raise ConfigError(name, f"must be [low, high] with 0 < low <= high, got [{low}, {high}]")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a SLURM or container limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_num_workers(cores: int | None = None) -> int:
    """``data.num_workers=auto``: ``min(cores - 1, AUTO_WORKERS_CAP)``, one core left to training.

    With a single worker to spare (2 cores or fewer) it is 0: on 2 cores one worker competes with the
    training threads and measured no faster than decoding in the main process (benchmarks/README.md,
    "RotNet: framework overhead"), and 0 starts no processes at all.
    """
    workers = min((usable_cores() if cores is None else cores) - 1, AUTO_WORKERS_CAP)
    return workers if workers >= 2 else 0


def check_data_path(cfg: DictConfig, key: str = "data") -> None:
    """``<key>.path`` is not empty, and is an existing folder when a split reads image folders from it.

    An empty path would silently scan the working directory; a file where a folder is expected would
    fail later with a message naming the split instead of the key the user set.
    """
    node = cfg.get(key)
    if node is None or "path" not in node:
        return
    path = select(cfg, f"{key}.path")
    if path is None:
        return
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            f"{key}.path", f"is empty; set it to a folder of images, e.g. {key}.path=/my/images"
        )
    folders = [
        split
        for split in ("pretrain", "train", "test")
        if node.get(split) is not None and str(node[split].get("_target_", "")).endswith(".FolderImages")
    ]
    if not folders:
        return
    where = Path(path).expanduser()
    if where.is_file():
        raise ConfigError(f"{key}.path", f"{where} is a file; {key}.{folders[0]} reads a folder of images")
    if not where.exists():
        raise ConfigError(f"{key}.path", f"{where} does not exist")


# torch.compile's modes (compile_mode; null is torch's default).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_training(cfg: DictConfig) -> None:
    """Value checks on the trainer and optimizer settings of a pretraining run."""
    epochs, steps = select(cfg, "trainer.max_epochs"), select(cfg, "trainer.max_steps")
    unbounded = (epochs is None or epochs <= 0) and (steps is None or steps <= 0)
    if unbounded and not OmegaConf.select(cfg, "trainer.max_time"):
        raise ConfigError(
            "trainer.max_epochs",
            f"set max_epochs or max_steps to a positive number (got {epochs} and {steps})",
        )
    if unbounded and cfg.get("schedule") is not None:
        raise ConfigError(
            "trainer.max_time",
            "a time budget alone gives the learning-rate schedule no length in steps: set trainer.max_steps "
            "or trainer.max_epochs as well (the time budget still stops the run when it runs out first)",
        )
    require_positive_number(cfg, "optim.lr")
    require_choice(cfg, "optim.lr_scaling", ("none", "linear", "sqrt"))
    require_positive_int(cfg, "trainer.accumulate_grad_batches")
    require_positive_int(cfg, "faults.skip_nonfinite", allow_zero=True)
    require_positive_int(cfg, "faults.check_every_n_steps")
    if select(cfg, "faults.check_every_n_steps") > 1 and select(cfg, "faults.skip_nonfinite") > 0:
        raise ConfigError(
            "faults.check_every_n_steps",
            "skipping non-finite steps (faults.skip_nonfinite > 0) needs a check every step; set it to 1",
        )
    if select(cfg, "compile_mode") is not None:
        require_choice(cfg, "compile_mode", COMPILE_MODES)
    seed = select(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")


def check_exports(exports: Mapping[str, str | os.PathLike[str]], prefix: str = "encoders.") -> None:
    """Every path is an exported encoder folder; the first that is not is named by its config key.

    Args:
        exports: label -> export folder (``cfg.encoders``).
        prefix: the config key of the labels (``encoders.``; ``""`` when the labels are keys themselves).
    """
    from selfsup.encoders.export import CONFIG_FILE

    for label, path in exports.items():
        if not (Path(path) / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{prefix}{label}", f"no exported encoder at {path} (expected {CONFIG_FILE} there)"
            )


def require_encoders(cfg: DictConfig, empty: str) -> dict[str, str]:
    """``cfg.encoders`` (label -> export folder), not empty (else ``empty`` is the error), every one exported."""
    encoders = dict(select(cfg, "encoders"))
    if not encoders:
        raise ConfigError("encoders", empty)
    check_exports(encoders)
    return encoders


def check_eval_config(cfg: DictConfig) -> None:
    """Value checks on ``cfg.eval``'s frozen-feature sections (``linear_probe``, ``knn``), before any work."""
    from selfsup.eval.linear_probe import LARS_NEEDS_TIMM, PROBE_OPTIMIZERS
    from selfsup.eval.probe_heads import PROBE_HEADS

    check_complete(cfg)
    if cfg.eval.get("linear_probe") is not None:
        for key in ("epochs", "batch_size", "target_dim"):
            require_positive_int(cfg, f"eval.linear_probe.{key}")
        grid = select(cfg, "eval.linear_probe.pool_grid")
        if grid not in ("auto", "full"):
            require_positive_int(cfg, "eval.linear_probe.pool_grid")
        require_choice(cfg, "eval.linear_probe.head", PROBE_HEADS)
        if select(cfg, "eval.linear_probe.head_hidden_dim") is not None:
            require_positive_int(cfg, "eval.linear_probe.head_hidden_dim")
        require_positive_int(cfg, "eval.linear_probe.head_channels")
        if select(cfg, "eval.linear_probe.token_pool") is not None:
            require_choice(cfg, "eval.linear_probe.token_pool", ("cls", "mean"))
        require_choice(cfg, "eval.linear_probe.mode", ("cached", "augmented"))
        require_choice(cfg, "eval.linear_probe.optimizer", PROBE_OPTIMIZERS)
        if select(cfg, "eval.linear_probe.optimizer") == "lars" and importlib.util.find_spec("timm") is None:
            raise ConfigError("eval.linear_probe.optimizer", LARS_NEEDS_TIMM)
        if not select(cfg, "eval.linear_probe.seeds"):
            raise ConfigError("eval.linear_probe.seeds", "needs at least one seed")
    if cfg.eval.get("knn") is not None:
        ks = select(cfg, "eval.knn.ks")
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError("eval.knn.ks", f"must be a list of positive integers, got {ks}")
        require_positive_number(cfg, "eval.knn.temperature")
        if select(cfg, "eval.knn.token_pool") is not None:
            require_choice(cfg, "eval.knn.token_pool", ("cls", "mean"))


def check_finetune_config(cfg: DictConfig, encoder: Encoder | None = None) -> None:
    """Value checks on ``cfg.eval.finetune``, run before any work starts.

    Args:
        cfg: the composed config.
        encoder: when given, ``freeze_until`` is checked against its stages too (the pipeline can
            check the encoder it is about to pretrain).
    """
    from selfsup.training.optim import LR_SCALING

    check_complete(cfg)
    key = FINETUNE
    require_number(
        cfg, f"{key}.label_fraction", "in (0, 1], e.g. 0.01 for 1% of the labels", lambda v: 0 < v <= 1
    )
    require_positive_int(cfg, f"{key}.epochs")
    for name in ("max_steps", "batch_size"):
        if select(cfg, f"{key}.{name}") is not None:
            require_positive_int(cfg, f"{key}.{name}")
    seeds = select(cfg, f"{key}.seeds")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{key}.seeds", f"must be a non-empty list of integers, got {seeds!r}")
    require_number(cfg, f"{key}.head_lr", "a positive number", lambda v: v > 0)
    require_number(cfg, f"{key}.encoder_lr", "a positive number", lambda v: v > 0)
    require_choice(cfg, f"{key}.lr_scaling", LR_SCALING)
    require_positive_int(cfg, f"{key}.reference_batch")
    require_number(cfg, f"{key}.layer_decay", "in (0, 1] (1 switches it off)", lambda v: 0 < v <= 1)
    require_number(cfg, f"{key}.weight_decay", "a non-negative number", lambda v: v >= 0)
    require_number(cfg, f"{key}.label_smoothing", "in [0, 1)", lambda v: 0 <= v < 1)
    for name in ("mixup", "cutmix"):
        require_number(
            cfg, f"{key}.{name}", "a non-negative Beta alpha (0 switches it off)", lambda v: v >= 0
        )
    require_number(cfg, f"{key}.drop_path", "in [0, 1)", lambda v: 0 <= v < 1)
    require_number(cfg, f"{key}.random_erasing", "a probability in [0, 1]", lambda v: 0 <= v <= 1)
    rand_augment = select(cfg, f"{key}.rand_augment")
    if rand_augment is not None and (
        len(rand_augment) != 2 or not all(isinstance(v, int) and v >= 0 for v in rand_augment)
    ):
        raise ConfigError(
            f"{key}.rand_augment", f"must be null or [num_ops, magnitude], e.g. [2, 9]; got {rand_augment!r}"
        )
    freeze_until = select(cfg, f"{key}.freeze_until")
    if freeze_until is not None and not isinstance(freeze_until, str):
        raise ConfigError(f"{key}.freeze_until", f"must be a stage name or null, got {freeze_until!r}")
    if encoder is not None:
        check_finetune_encoder(encoder, freeze_until, drop_path=float(select(cfg, f"{key}.drop_path")))


def check_finetune_encoder(
    encoder: Encoder,
    freeze_until: str | None,
    image_size: int | None = None,
    where: str = "",
    drop_path: float = 0.0,
) -> None:
    """``freeze_until`` names one of the encoder's stages, the encoder takes ``image_size`` px images,
    and it has stochastic depth when ``drop_path`` asks for it (a ViT).

    ``where`` is appended to the message (which encoder it was).
    """
    from selfsup.eval.finetune import frozen_stages

    try:
        frozen_stages(encoder.stage_names, freeze_until)
    except ValueError as e:
        raise ConfigError(f"{FINETUNE}.freeze_until", f"{e}{where}") from None
    if drop_path > 0 and not hasattr(encoder, "set_drop_path"):
        raise ConfigError(
            f"{FINETUNE}.drop_path",
            f"{type(encoder).__name__} has no stochastic depth (a ViT has); set it to 0{where}",
        )
    if image_size is not None:
        try:
            encoder.check_image_size(image_size)
        except ValueError as e:
            raise ConfigError("data.image_size", f"{e}{where}") from None


def check_finetune_exports(
    encoders: Mapping[str, str | os.PathLike[str]],
    freeze_until: str | None,
    image_size: int,
    drop_path: float = 0.0,
) -> None:
    """:func:`check_finetune_encoder` on every export (label -> folder), each named in the error."""
    from selfsup.encoders import export

    for label, path in encoders.items():
        where = f" (encoder '{label}' at {path})"
        check_finetune_encoder(export.load(path), freeze_until, image_size, where, drop_path)


def check_projection(cfg: DictConfig, method_key: str, max_points_key: str) -> str | None:
    """A 2-D map's method (``tsne``, ``umap`` or null) and point budget; returns the method."""
    from selfsup.eval.embeddings import PROJECTIONS

    method = select(cfg, method_key)
    if method is not None and method not in PROJECTIONS:
        raise ConfigError(method_key, f"must be one of {list(PROJECTIONS)} or null, got {method!r}")
    require_positive_int(cfg, max_points_key)
    return method


def check_embed_config(cfg: DictConfig) -> None:
    """Value checks of ``selfsup-embed`` (conf/embed.yaml), and its export."""
    check_complete(cfg)
    require_choice(cfg, "split", ("pretrain", "train", "test"))
    check_projection(cfg, "projection.method", "projection.max_points")
    check_exports({"encoder_path": select(cfg, "encoder_path")}, prefix="")


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
