"""A test-only callback that records which images every training step saw, one file per rank.

Enabled from the command line of a real run (the subprocess needs the repo on ``PYTHONPATH``):
``+callbacks.seen._target_=tests.data.seen.SeenIndices +callbacks.seen.folder=<folder>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class SeenIndices(pl.Callback):
    """Append ``{"epoch", "rank", "index": [...]}`` per training batch to ``<folder>/seen-rank<r>.jsonl``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"epoch": trainer.current_epoch, "rank": trainer.global_rank, "index": batch["index"].tolist()}
        with open(self.folder / f"seen-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def read_seen(folder: Path) -> list[dict[str, Any]]:
    """Every recorded batch of every rank."""
    return [
        json.loads(line)
        for path in sorted(folder.glob("seen-rank*.jsonl"))
        for line in path.read_text().splitlines()
    ]
