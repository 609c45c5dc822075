"""Helpers shared by the benchmark scripts: composing configs, timing, recording results."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

RESULTS = Path(__file__).resolve().parent / "results"


def compose_cfg(
    overrides: Sequence[str],
    config_name: str = "pretrain",
    run_dir: str | os.PathLike[str] = "/tmp/selfsup-bench",
) -> DictConfig:
    with initialize_config_module("selfsup.conf", version_base="1.3"):
        return compose(config_name, overrides=[f"paths.run_dir={run_dir}", *overrides])


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record(name: str, result: dict[str, Any]) -> Path:
    """Append one result (with the machine and the time) to benchmarks/results/<name>.jsonl."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **result}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return path


class StepTimer(pl.Callback):
    """Wall-clock time between consecutive training-batch ends: the whole step, data waiting included."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.warmup:
            self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        """Median time between consecutive steps: robust to the spikes of a shared, noisy machine."""
        if len(self.times) < 2:
            raise RuntimeError("too few timed steps; raise --steps")
        return statistics.median(b - a for a, b in itertools.pairwise(self.times))


def median_step_seconds(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, steps: int, warmup: int
) -> float:
    """Median wall time of ``loss_fn()`` + backward + optimizer step, after ``warmup`` untimed steps.

    The median, not the mean: robust to the slow spells of a shared machine.
    """
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)
