"""The layout of a run directory, owned here and nowhere else.

Every stage writes into one folder per run (``paths.run_dir``, set by Hydra)::

    .hydra/                  the composed config and overrides (written by Hydra)
    metrics.json             every stage's results, merged section by section
    report.md, figures/      the run's report and its pictures
    encoder/, encoder_init/  the pretrained encoder and its random initialization (exports)
    checkpoints/last.ckpt    what ``resume=auto`` starts from (configured: callbacks.last_checkpoint)
    logs/version_N/          CSV training logs, one folder per attempt (configured: logger.csv)
    bad_images.txt           images that could not be decoded and were skipped
    reconstructions/         MAE/SimMIM grids;  puzzles.png: Jigsaw puzzles
    finetune/<label>/seed<seed>/   fine-tuning curves
    embeddings.npz, embedding_<method>.png   ``selfsup-embed``'s features and their 2-D map
    .lock                    held (``fcntl.flock``) by the one process writing the run; see :meth:`RunDir.locked`

The checkpoint and log folders are whatever the callback and logger configs say; :meth:`RunDir.from_config`
reads them there, so ``resume=auto`` and the training curves follow a changed yaml. Every file is
written atomically (:mod:`selfsup.atomic`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from selfsup.atomic import atomic_write_text
from selfsup.errors import RunDirBusyError

CSV_LOGGER = "CSVLogger"
# Locks this process holds: run directory -> (open lock file, depth), so a stage inside another
# stage (the pipeline's pretraining) re-enters the lock instead of blocking on itself.
_HELD: dict[Path, tuple[int, int]] = {}


class _Child:
    """A fixed name inside the run directory: ``RunDir.<attribute>`` is ``root / name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir, owner: type | None = None) -> Path:
        return run.root / self.name


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory.

    Args:
        root: the run directory.
        checkpoint_dir: where ``last.ckpt`` and periodic checkpoints go; None when checkpointing is off.
        last_checkpoint_name: file name (without ``.ckpt``) of the checkpoint ``resume=auto`` reads.
        log_dir: the CSV logger's folder (holding ``version_N/metrics.csv``); None without a CSV logger.

    Example:
        >>> run = RunDir.from_config(cfg)   # or RunDir.default(path), RunDir.open(path)
        >>> run.encoder, run.last_checkpoint
        (PosixPath('outputs/runs/x/encoder'), PosixPath('outputs/runs/x/checkpoints/last.ckpt'))
    """

    root: Path
    checkpoint_dir: Path | None
    log_dir: Path | None
    last_checkpoint_name: str = "last"

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def default(cls, root: str | os.PathLike[str]) -> RunDir:
        """The layout with the shipped callback and logger configs: ``checkpoints/`` and ``logs/``."""
        root = Path(root)
        return cls(root, root / "checkpoints", root / "logs")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunDir:
        """The run directory ``cfg.paths.run_dir`` with the checkpoint and log folders the config sets."""
        root = Path(cfg.paths.run_dir)
        callbacks = cfg.get("callbacks") or {}
        last = callbacks.get("last_checkpoint")
        checkpoint_dir = None if last is None else Path(last.get("dirpath") or root / "checkpoints")
        loggers = cfg.get("logger") or {}
        csv = next(
            (
                node
                for node in loggers.values()
                if node is not None and str(node.get("_target_", "")).endswith(CSV_LOGGER)
            ),
            None,
        )
        log_dir = (
            None
            if csv is None
            else Path(csv.get("save_dir") or root) / str(csv.get("name") or "lightning_logs")
        )
        # Configured folders are absolute or relative to the working directory, like paths.run_dir.
        name = str(last.get("filename") or "last") if last is not None else "last"
        return cls(root, checkpoint_dir, log_dir, name)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> RunDir:
        """An existing run directory, with the folders its own recorded config (``.hydra/config.yaml``) set."""
        root = Path(root)
        config_file = root / ".hydra" / "config.yaml"
        if not config_file.is_file():
            return cls.default(root)
        cfg = OmegaConf.load(config_file)
        if not isinstance(cfg, DictConfig) or "paths" not in cfg:
            return cls.default(root)
        cfg.paths.run_dir = str(root)  # recorded as ${hydra:runtime.output_dir}, unresolvable here
        try:
            return cls.from_config(cfg)
        except Exception:  # an interpolation only Hydra could resolve: fall back to the default layout
            return cls.default(root)

    # -- fixed names (the layout of the module docstring) --------------------------------------
    metrics = _Child("metrics.json")
    report = _Child("report.md")
    figures = _Child("figures")
    encoder = _Child("encoder")
    encoder_init = _Child("encoder_init")
    bad_images = _Child("bad_images.txt")
    reconstructions = _Child("reconstructions")
    puzzles = _Child("puzzles.png")
    embeddings = _Child("embeddings.npz")
    hydra_dir = _Child(".hydra")
    lock_file = _Child(".lock")

    def embedding_map(self, method: str) -> Path:
        """``selfsup-embed``'s 2-D map of the features (``tsne``, ``umap``)."""
        return self.root / f"embedding_{method}.png"

    def finetune_logs(self, label: str, seed: int) -> Path:
        """Folder of one fine-tuning run's ``metrics.csv``."""
        return self.root / "finetune" / label / f"seed{seed}"

    # -- configured folders --------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path | None:
        """The checkpoint ``resume=auto`` reads; None when checkpointing is switched off."""
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.last_checkpoint_name}.ckpt"

    def csv_logs(self) -> list[Path]:
        """Every attempt's ``metrics.csv`` (``version_0``, ``version_1``, ...), oldest first."""
        if self.log_dir is None:
            return []
        return sorted(self.log_dir.glob("version_*/metrics.csv"), key=lambda p: _version(p.parent.name))

    # -- one writer at a time ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock (``.lock``) while the block runs; refuse if another process holds it.

        ``fcntl.flock`` is released by the kernel when the holder exits, however it exits, so a lock
        left by a killed run never blocks the next one. The file keeps the holder's pid for the message.

        Raises:
            RunDirBusyError: another live process is writing this run directory.
        """
        key = self.root.resolve()
        if key in _HELD:  # re-entered by the same process
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirBusyError(
                    f"run directory {self.root} is in use by another run (pid {holder}); wait for it to "
                    "finish, or choose another directory (hydra.run.dir=...)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = (fd, 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
            else:
                del _HELD[key]
                os.close(fd)  # releases the flock

    # -- metrics.json ----------------------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any]:
        """The run's metrics.json, or ``{}`` when there is none yet."""
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def update_metrics(self, section: str, values: Any) -> dict[str, Any]:
        """Set ``metrics[section] = values`` in metrics.json, keeping the other sections; returns them all."""
        metrics = self.read_metrics()
        metrics[section] = values
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")
        return metrics


def _version(name: str) -> int:
    """``version_12`` -> 12 (numeric order, so version_10 comes after version_9)."""
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1
