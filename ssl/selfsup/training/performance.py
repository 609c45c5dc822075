"""The pretraining step's performance switches, applied in one place (the stage and the benchmarks).

- ``channels_last``: the task's weights and its encoder inputs in NHWC memory format, which cuDNN's
  bf16 convolution kernels prefer (a ViT's patch embedding is a convolution too).
- ``compile``: ``torch.compile`` of the task's :meth:`~selfsup.tasks.base.PretextTask.pretext_step`,
  so the pretext inputs (rotations, tiles, masks), the encoder, the head and the loss are traced
  together; Dynamo splits the graph where it must. Compiling only the encoder would leave MAE's and
  SimMIM's steps eager, since they call the ViT's parts rather than its ``forward``.

Bf16 autocast is Lightning's (``trainer.precision``), fused optimizer kernels are chosen where the
optimizer is built (:func:`selfsup.training.optim.build_optimizer`), and ``trainer=gpu_fast`` turns
everything on.
"""

from __future__ import annotations

import logging

import torch

from selfsup.tasks.base import PretextTask

log = logging.getLogger(__name__)


def apply_performance_switches(
    task: PretextTask, *, channels_last: bool, compile: bool, compile_mode: str | None = None
) -> None:
    """Set ``task`` up for the fast step, in place: memory format first, then compilation."""
    if channels_last:
        task.memory_format = torch.channels_last
        task.to(memory_format=torch.channels_last)
    if compile:
        task.compile_step(mode=compile_mode)
        log.info("torch.compile: %s's pretext step (mode %s)", type(task).__name__, compile_mode or "default")
