"""Checkpoints written atomically in the run directory's own file system, and read back with care.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction, which for local paths first
writes the whole checkpoint under the *system* temp folder (``tempfile.mkstemp()``) and then moves it:
a copy across file systems, and a small ``/tmp`` on a cluster node fills up. Here the checkpoint is
serialized straight into a temporary file beside the target (:func:`selfsup.atomic.atomic_write`) and
renamed over it, so a run killed while saving keeps the previous checkpoint, a failed save leaves no
temporary file, and a full disk is a :class:`~selfsup.errors.DiskFullError` naming the file.

:func:`check_checkpoint` and :func:`newest_readable` serve ``resume=auto``: a truncated or empty
``last.ckpt`` is detected before Lightning trips over it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from selfsup.atomic import TEMP_MARKER, atomic_write
from selfsup.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with write-then-rename saves beside the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(Path(path), lambda tmp: _save(checkpoint, tmp))


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


def check_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a readable Lightning checkpoint.

    Reads the file memory-mapped (cheap: no tensor data is copied) and checks that it holds weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # EOFError, RuntimeError (bad zip), UnpicklingError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {reason})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")


def newest_readable(folder: str | os.PathLike[str], exclude: Path | None = None) -> Path | None:
    """The most recently written readable checkpoint in ``folder`` (temporary files skipped), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [
        p
        for p in folder.glob(f"*{CHECKPOINT_SUFFIX}")
        if p.is_file() and TEMP_MARKER not in p.name and (exclude is None or p != exclude)
    ]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            check_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            continue
        return path
    return None
