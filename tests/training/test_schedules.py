"""Schedules and the derived learning rate."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from selfsup.training.optim import build_optimizer, derived_lr, param_groups
from selfsup.training.schedules import constant, warmup_cosine, warmup_step


def _lrs(make, total: int = 100, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make(optimizer, total_steps=total, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_cosine() -> None:
    lrs = _lrs(warmup_cosine, warmup_fraction=0.1, final_lr_fraction=0.0)
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)
    assert lrs[10 + 45] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in pairwise(lrs[10:]))
    assert lrs[-1] < 0.01


def test_step_schedule_drops_at_milestones() -> None:
    lrs = _lrs(warmup_step, milestones=(0.5, 0.75), gamma=0.1)
    assert lrs[49] == pytest.approx(2.0) and lrs[50] == pytest.approx(0.2) and lrs[75] == pytest.approx(0.02)


def test_constant_with_warmup() -> None:
    lrs = _lrs(constant, warmup_fraction=0.04)
    assert lrs[0] == pytest.approx(0.5) and lrs[3:] == [pytest.approx(2.0)] * 97


def test_derived_lr_rules() -> None:
    assert derived_lr(1.5e-4, "linear", 4096) == pytest.approx(1.5e-4 * 16)
    assert derived_lr(1e-3, "sqrt", 1024) == pytest.approx(2e-3)
    assert derived_lr(1e-3, "none", 1024) == 1e-3
    with pytest.raises(ValueError, match="lr_scaling"):
        derived_lr(1e-3, "cubic", 1)


def test_biases_and_norms_are_not_decayed() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups([net], weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
    optimizer = build_optimizer(torch.optim.AdamW, [net], lr=0.01, weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
