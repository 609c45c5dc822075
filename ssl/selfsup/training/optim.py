"""Optimizer construction: which parameters are weight-decayed, the learning rate, the optimizer.

One weight-decay rule, for pretraining and fine-tuning alike (:func:`split_weight_decay`):

- with ``no_decay_bias_and_norm`` (every shipped config), a trainable parameter is *not* decayed
  when it is 1-D (biases, norm scales and shifts, SimMIM's ViT mask token) or when a module that
  holds it names it in its ``no_weight_decay()`` method (timm's convention: a set of parameter names
  relative to that module). ViT encoders name their class token and position embedding, MAE's
  decoder its mask token, SimMIM's learned fill its value; everything else is decayed;
- with ``no_decay_bias_and_norm: false`` every trainable parameter is decayed (RotNet's official code).

MAE's own code uses two rules: its pretraining (``main_pretrain.py``, timm's ``add_weight_decay``)
decays the class and mask tokens, its fine-tuning (``param_groups_lrd``) exempts the class token and
position embedding. selfsup uses the fine-tuning rule for both, so a ViT's class token is treated
the same way in every stage.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

log = logging.getLogger(__name__)

LR_SCALING = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class OptimSettings:
    """How a pretext task is optimized: one ``conf/optim/*.yaml``, built once (the yaml owns the values).

    Attributes:
        optimizer: ``factory(param_groups, lr=...)``, e.g. the yaml's ``_partial_`` AdamW.
        lr: base learning rate; the rate used is :meth:`lr_for` the effective batch.
        lr_scaling: ``none``, ``linear`` or ``sqrt`` (:func:`derived_lr`).
        reference_batch: the batch size ``lr`` is given for.
        weight_decay: for weights.
        no_decay_bias_and_norm: exempt biases, norm parameters and the parameters encoders and heads
            name in ``no_weight_decay()`` (false: decay everything, as RotNet's official code does; see
            the module docstring).
    """

    optimizer: Callable[..., Optimizer]
    lr: float
    lr_scaling: str
    reference_batch: int
    weight_decay: float
    no_decay_bias_and_norm: bool

    def __post_init__(self) -> None:
        if self.lr_scaling not in LR_SCALING:
            raise ValueError(f"lr_scaling must be one of {LR_SCALING}, got {self.lr_scaling!r}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> OptimSettings:
        """From an ``optim`` config (its ``optimizer`` node instantiated or not); every key is required."""
        from hydra.utils import instantiate

        factory = node["optimizer"]
        if not callable(factory):
            factory = instantiate(factory)
        return cls(
            optimizer=factory,
            lr=float(node["lr"]),
            lr_scaling=str(node["lr_scaling"]),
            reference_batch=int(node["reference_batch"]),
            weight_decay=float(node["weight_decay"]),
            no_decay_bias_and_norm=bool(node["no_decay_bias_and_norm"]),
        )

    @classmethod
    def shipped(cls, name: str = "adamw") -> OptimSettings:
        """The settings of the shipped ``conf/optim/<name>.yaml`` (what ``optim=<name>`` selects)."""
        from importlib.resources import files

        from omegaconf import DictConfig, OmegaConf

        text = files("selfsup.conf").joinpath("optim").joinpath(f"{name}.yaml").read_text()
        node = OmegaConf.create(text)
        assert isinstance(node, DictConfig)
        return cls.from_config(node)

    def lr_for(self, effective_batch: int) -> float:
        """The learning rate used at ``effective_batch`` images per optimizer step."""
        return derived_lr(self.lr, self.lr_scaling, effective_batch, self.reference_batch)


def derived_lr(base_lr: float, scaling: str, effective_batch: int, reference_batch: int = 256) -> float:
    """The learning rate actually used.

    ``linear`` is MAE's and Goyal et al.'s rule, ``lr = base_lr * effective_batch / reference_batch``;
    ``sqrt`` scales by the square root of that ratio; ``none`` uses ``base_lr`` as is.
    """
    if scaling not in LR_SCALING:
        raise ValueError(f"lr_scaling must be one of {LR_SCALING}, got {scaling!r}")
    ratio = effective_batch / reference_batch
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def no_weight_decay_ids(modules: Iterable[nn.Module]) -> set[int]:
    """Ids of the parameters that some submodule's ``no_weight_decay()`` names (timm's convention).

    Raises:
        ValueError: when a ``no_weight_decay()`` names a parameter its module does not have.
    """
    exempt: set[int] = set()
    for module in modules:
        for sub in module.modules():
            names = getattr(sub, "no_weight_decay", None)
            if not callable(names):
                continue
            for name in names():
                try:
                    exempt.add(id(sub.get_parameter(name)))
                except AttributeError:
                    raise ValueError(
                        f"{type(sub).__name__}.no_weight_decay() names {name!r}, which is not one of its parameters"
                    ) from None
    return exempt


def is_decayed(param: nn.Parameter, exempt: Collection[int], no_decay_bias_and_norm: bool = True) -> bool:
    """The one weight-decay rule (module docstring): decayed unless 1-D or named by ``no_weight_decay()``."""
    return not no_decay_bias_and_norm or (param.ndim > 1 and id(param) not in exempt)


def split_weight_decay(
    params: Iterable[nn.Parameter], exempt: Collection[int], no_decay_bias_and_norm: bool = True
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters (each once, in order) as (decayed, not decayed) by :func:`is_decayed`.

    Args:
        params: candidates; frozen ones (``requires_grad`` false) are left out.
        exempt: ids from :func:`no_weight_decay_ids` of the modules holding them.
        no_decay_bias_and_norm: false decays every parameter.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if is_decayed(p, exempt, no_decay_bias_and_norm) else no_decay).append(p)
    return decay, no_decay


def param_groups(
    modules: Iterable[nn.Module], weight_decay: float, no_decay_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """The trainable parameters of ``modules`` in two groups: decayed, and not decayed (module docstring)."""
    modules = list(modules)
    params = (p for module in modules for p in module.parameters())
    decay, no_decay = split_weight_decay(params, no_weight_decay_ids(modules), no_decay_bias_and_norm)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    factory: Callable[..., Optimizer],
    modules: Iterable[nn.Module],
    lr: float,
    weight_decay: float,
    no_decay_bias_and_norm: bool = True,
) -> Optimizer:
    """``factory(param_groups, lr=lr)``; uses torch's fused kernels on CUDA where the optimizer has them."""
    groups = param_groups(modules, weight_decay, no_decay_bias_and_norm)
    params = [p for g in groups for p in g["params"]]
    kwargs: dict[str, Any] = {"lr": lr}
    if params and all(p.is_cuda for p in params) and _accepts(factory, "fused"):
        kwargs["fused"] = True
    return factory(groups, **kwargs)


def _accepts(factory: Callable[..., Optimizer], name: str) -> bool:
    target = getattr(factory, "func", factory)
    if name in getattr(factory, "keywords", {}):
        return False  # the config already chose
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def optimizer_summary(optimizer: Optimizer) -> str:
    groups = ", ".join(
        f"{sum(p.numel() for p in g['params']):,} params wd={g['weight_decay']}"
        for g in optimizer.param_groups
    )
    return f"{type(optimizer).__name__}({groups})"
