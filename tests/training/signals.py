"""A callback that plays SLURM's part in tests: the requeue signal at a given step, then the kill."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    """After optimizer step ``step``, send ``signal`` to this process, then exit as SLURM's kill would."""

    def __init__(self, step: int, signal: str = "SIGUSR1") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))  # the handler runs before the next line
            os._exit(0)
