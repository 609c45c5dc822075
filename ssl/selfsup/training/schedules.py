"""Learning-rate schedules as multipliers of the base rate, over the run's total optimizer steps.

Lengths are fractions of the run, so one config fits any number of epochs or steps. Each factory
takes ``(optimizer, total_steps)`` and returns a per-step ``LambdaLR``; configs bind the rest with
``_partial_: true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_lr_fraction: float = 0.0
) -> LambdaLR:
    """Linear warmup to the base rate, then half a cosine down to ``final_lr_fraction`` of it."""
    warmup_steps = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_step(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LambdaLR:
    """Linear warmup, then the rate times ``gamma`` at each milestone (fractions of the run)."""
    warmup_steps = max(1, round(warmup_fraction * total_steps))
    bounds = sorted(round(m * total_steps) for m in milestones)

    def factor(step: int) -> float:
        return _warmup(step, warmup_steps) * gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0) -> LambdaLR:
    """Linear warmup, then the base rate."""
    warmup_steps = max(1, round(warmup_fraction * total_steps))
    return LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))
