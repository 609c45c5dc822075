"""Pretext tasks: one module per task, each a LightningModule built on :class:`PretextTask`."""

from selfsup.tasks.base import PretextTask, StepOutput

__all__ = ["PretextTask", "StepOutput"]
