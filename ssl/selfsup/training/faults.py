"""Faults during training that must lose nothing: non-finite values and Ctrl-C.

- :class:`NonFiniteGuard` checks the gradients before every optimizer step and the weights after it.
  Non-finite gradients (a NaN or inf loss gives them) either skip that step (no update, up to
  ``skip_nonfinite`` times) or stop the run with a :class:`~selfsup.errors.NonFiniteError` naming the
  step and the last good checkpoint. The checks run in hooks that Lightning calls before
  ``ModelCheckpoint``'s own (checkpoint callbacks always run last), so a non-finite state is never
  saved over the last good checkpoint.
  Each check reads one flag back from the device, a host-device synchronisation that stalls a GPU's
  queue of kernels. With ``check_every_n_steps=N`` the per-step work stays on the device (the first
  bad step is noted there) and is read every N steps, at the end of every epoch and before every
  checkpoint is written; the run still stops naming the first bad step, and nothing non-finite is
  saved, but up to N-1 steps run on after it. Skipping bad steps needs the check every step.
- :class:`GracefulInterrupt` turns the first Ctrl-C (SIGINT) or SIGTERM (what a scheduler sends to
  preempt a job, and what SLURM sends at the time limit without ``--signal``) into "finish this step,
  save ``last.ckpt``, stop"; a second one stops at once (Lightning's own handling), keeping the last
  checkpoint. The requeued or rerun job continues with ``resume=auto``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch

from selfsup.errors import NonFiniteError
from selfsup.training.checkpoint_io import newest_readable

log = logging.getLogger(__name__)


def finite_flag(tensors: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """() bool on the tensors' device: every element of every floating tensor is finite (no sync)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return torch.stack(flags).all() if flags else None


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one device sync for all of them)."""
    flag = finite_flag(tensors)
    return True if flag is None else bool(flag)


def last_good_checkpoint(checkpoint_dir: Path | None) -> str:
    """A phrase naming the newest readable checkpoint, for error messages."""
    found = newest_readable(checkpoint_dir) if checkpoint_dir is not None else None
    return f"last good checkpoint: {found}" if found is not None else "no checkpoint was saved yet"


class NonFiniteGuard(pl.Callback):
    """Stop (or skip a bounded number of steps) when gradients or weights stop being finite.

    Args:
        skip_nonfinite: how many steps with non-finite gradients may be skipped (no optimizer update)
            before the run stops; 0 stops at the first.
        checkpoint_dir: where the run's checkpoints are, to name the last good one; None when off.
        check_every_n_steps: read the checks back from the device every this many steps (and at epoch
            ends and checkpoints) instead of every step; see the module docstring.
    """

    def __init__(
        self, skip_nonfinite: int = 0, checkpoint_dir: Path | None = None, check_every_n_steps: int = 1
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if check_every_n_steps > 1 and skip_nonfinite > 0:
            raise ValueError("skipping non-finite steps needs a check every step (check_every_n_steps=1)")
        self.skip_nonfinite = skip_nonfinite
        self.checkpoint_dir = checkpoint_dir
        self.check_every_n_steps = check_every_n_steps
        self.skipped = 0
        self._first_bad: torch.Tensor | None = None  # () long on the device: first bad step, or -1

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 with a GradScaler: the scaler itself skips steps with inf gradients
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        step = trainer.global_step + 1
        if self.check_every_n_steps > 1:
            self._note(finite_flag(grads), step)
            return
        if all_finite(grads):
            return
        if self.skipped < self.skip_nonfinite:
            self.skipped += 1
            log.warning(
                "non-finite gradients at step %d: step skipped (%d of faults.skip_nonfinite=%d)",
                step,
                self.skipped,
                self.skip_nonfinite,
            )
            optimizer.zero_grad(set_to_none=True)  # parameters without gradients are not updated
            return
        self._stop(f"the loss or its gradients became NaN or inf at step {step}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.check_every_n_steps == 0 or trainer.is_last_batch:
            self._check(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.check_every_n_steps > 1:  # Lightning calls this before the file is written
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_every_n_steps > 1:
            self._check(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_every_n_steps > 1:  # a run stopped mid-epoch (max_steps, max_time) ends here
            self._check(trainer, pl_module)

    def _note(self, finite: torch.Tensor | None, step: int) -> None:
        """Remember ``step`` on the device when ``finite`` is False, unless an earlier step was bad."""
        if finite is None:
            return
        bad = torch.where(finite, -1, step)
        self._first_bad = (
            bad if self._first_bad is None else torch.where(self._first_bad >= 0, self._first_bad, bad)
        )

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop when a noted step had non-finite gradients or the weights are not finite (one sync each)."""
        if self._first_bad is not None:
            first, self._first_bad = int(self._first_bad), None
            if first >= 0:
                self._stop(f"the loss or its gradients became NaN or inf at step {first}")
        if not all_finite(pl_module.parameters()):
            self._stop(f"the weights became NaN or inf at step {trainer.global_step}")

    def _stop(self, what: str) -> None:
        skipped = f" after skipping {self.skipped} bad steps" if self.skipped else ""
        raise NonFiniteError(
            f"{what}{skipped}; stopped without saving it ({last_good_checkpoint(self.checkpoint_dir)}). "
            "Lower optim.lr, clip gradients (trainer.gradient_clip_val), or allow a few bad steps "
            "with faults.skip_nonfinite=N"
        )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulInterrupt(pl.Callback):
    """On the first Ctrl-C or SIGTERM: finish the current step, save ``checkpoint``, and stop training.

    Args:
        checkpoint: where to save (the run's ``last.ckpt``); None when checkpointing is off.

    Attributes:
        requested: Ctrl-C was pressed (or SIGTERM arrived) during training.
        signum: which of the two, or None.
        saved: the checkpoint written after it, or None.
        step: the step at which training stopped.
    """

    def __init__(self, checkpoint: Path | None) -> None:
        self.checkpoint = checkpoint
        self.requested = False
        self.signum: int | None = None
        self.saved: Path | None = None
        self.step = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        log.warning(
            "%s: saving a checkpoint after this step and stopping (send it again to stop now)",
            "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replaces Lightning's own SIGTERM handler, which under SLURM only logs the signal.
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        self.requested, self.step = True, trainer.global_step
        if self.checkpoint is not None:
            trainer.save_checkpoint(self.checkpoint)
            self.saved = self.checkpoint
            for callback in trainer.checkpoint_callbacks:  # no second save of this step at the epoch's end
                if hasattr(callback, "_last_global_step_saved"):
                    callback._last_global_step_saved = trainer.global_step
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
