"""Optimizer construction: parameter groups, the learning rate derived from the batch, the schedule."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

log = logging.getLogger(__name__)

LR_SCALING = ("none", "linear", "sqrt")


def derived_lr(base_lr: float, scaling: str, effective_batch: int, reference_batch: int = 256) -> float:
    """The learning rate actually used.

    ``linear`` is MAE's and Goyal et al.'s rule, ``lr = base_lr * effective_batch / reference_batch``;
    ``sqrt`` scales by the square root of that ratio; ``none`` uses ``base_lr`` as is.
    """
    if scaling not in LR_SCALING:
        raise ValueError(f"lr_scaling must be one of {LR_SCALING}, got {scaling!r}")
    ratio = effective_batch / reference_batch
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def param_groups(
    modules: Iterable[nn.Module], weight_decay: float, no_decay_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: decayed weights, and undecayed biases and norm parameters.

    Biases, norm scales and 1-D parameters such as class tokens are not decayed when
    ``no_decay_bias_and_norm`` (the convention of MAE, DINO and timm).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if no_decay_bias_and_norm and p.ndim <= 1 else decay).append(p)
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
