"""Checkpoints written atomically (:func:`selfsup.atomic.atomic_write`): a temporary file beside the
target, then renamed over it.

A run killed while saving leaves the previous checkpoint intact instead of a truncated file, and a
save that fails leaves no temporary file behind.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from selfsup.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with write-then-rename saves."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        save = super().save_checkpoint
        atomic_write(path, lambda tmp: save(checkpoint, tmp, storage_options))
