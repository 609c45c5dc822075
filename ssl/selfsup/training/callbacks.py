"""Callbacks that every pretraining run uses (wired in conf/callbacks)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.callbacks import RichProgressBar


class RNGStateCheckpoint(pl.Callback):
    """Saves every rank's random-number-generator states in checkpoints and restores them on resume.

    Lightning restores weights, optimizer and loop counters but not the RNGs that draw data order,
    augmentations and pretext targets; without them a resumed run diverges from an uninterrupted one.
    With them, a run resumed from an end-of-epoch checkpoint ends with the same weights.
    """

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        if "numpy" in states:  # checkpoints load with weights_only=True: store numpy's array as a tensor
            kind, keys, pos, has_gauss, cached = states["numpy"]
            states["numpy"] = (
                kind,
                torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                pos,
                has_gauss,
                cached,
            )
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("per_rank", [])
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank < len(per_rank):
            states = dict(per_rank[rank])
            if "numpy" in states:
                kind, keys, pos, has_gauss, cached = states["numpy"]
                states["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
            _set_rng_states(states)


class Throughput(pl.Callback):
    """Optimizer steps and seconds of this attempt's training loop (a resumed run counts only its own).

    Attributes:
        steps: optimizer steps taken between the start and the end of ``fit``.
        seconds: wall-clock seconds between them (setup and teardown excluded).
    """

    def __init__(self) -> None:
        self.steps, self.seconds = 0, 0.0
        self._start: tuple[int, float] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = (trainer.global_step, time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self.steps = trainer.global_step - self._start[0]
            self.seconds = time.perf_counter() - self._start[1]


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, showing the task's ``train/`` metrics read every N steps.

    The task logs its loss and accuracies as tensors on the device, with ``prog_bar=False``:
    Lightning turns every progress-bar metric into a Python number after every batch (``.item()``,
    which makes the host wait for every queued kernel, once per step on a GPU). This bar reads them
    from ``trainer.callback_metrics`` (still tensors) when the loggers do (``trainer.log_every_n_steps``,
    conf/callbacks/default.yaml) and shows the last values in between.

    Args:
        *args, **kwargs: those of ``RichProgressBar``.
        metrics_every_n_steps: read the metrics every this many optimizer steps (1: every batch).
    """

    PREFIX = "train/"

    def __init__(self, *args: Any, metrics_every_n_steps: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if metrics_every_n_steps < 1:
            raise ValueError(f"metrics_every_n_steps must be >= 1, got {metrics_every_n_steps}")
        self.metrics_every_n_steps = metrics_every_n_steps
        self._shown: dict[str, float] | None = None
        self._read_at = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        step, every = trainer.global_step, self.metrics_every_n_steps
        if self._shown is None or step // every != self._read_at // every or not trainer.training:
            logged = trainer.callback_metrics
            self._shown = {k: float(v) for k, v in logged.items() if k.startswith(self.PREFIX)}
            self._read_at = step
        return {**super().get_metrics(trainer, pl_module), **self._shown}
