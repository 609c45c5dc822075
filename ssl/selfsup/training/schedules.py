"""Learning-rate schedules as multipliers of the base rate, over the run's total optimizer steps.

Lengths are fractions of the run, so one config fits any number of epochs or steps. Each factory
takes ``(optimizer, total_steps)`` and returns a per-step ``LambdaLR``; configs bind the rest with
``_partial_: true``. A ``warmup_fraction`` of 0 means no warmup; any positive fraction warms up over
at least one step. :func:`lightning_optimizers` is what a ``configure_optimizers`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def warmup_steps_of(warmup_fraction: float, total_steps: int) -> int:
    """Warmup length in steps: 0 for a fraction of 0, else ``round(fraction * total)`` and at least 1."""
    return max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float, final_lr_fraction: float = 0.0
) -> LambdaLR:
    """Linear warmup to the base rate, then half a cosine down to ``final_lr_fraction`` of it.

    Without warmup the factor at step ``s`` is ``0.5 * (1 + cos(pi * s / total_steps))`` (the probes'
    schedule); it stays at its final value past ``total_steps``.
    """
    warmup_steps = warmup_steps_of(warmup_fraction, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        span = max(1, total_steps - warmup_steps)
        angle = math.pi * min(step - warmup_steps, span) / span
        return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(angle))

    return LambdaLR(optimizer, factor)


def warmup_step(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float],
    gamma: float,
    warmup_fraction: float = 0.0,
) -> LambdaLR:
    """Linear warmup, then the rate times ``gamma`` at each milestone (fractions of the run)."""
    warmup_steps = warmup_steps_of(warmup_fraction, total_steps)
    bounds = sorted(round(m * total_steps) for m in milestones)

    def factor(step: int) -> float:
        return _warmup(step, warmup_steps) * gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0) -> LambdaLR:
    """Linear warmup, then the base rate."""
    warmup_steps = warmup_steps_of(warmup_fraction, total_steps)
    return LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))


def lightning_optimizers(optimizer: Optimizer, scheduler: LRScheduler | None = None) -> Any:
    """What ``configure_optimizers`` returns: the optimizer alone, or with a scheduler stepped every step."""
    if scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
