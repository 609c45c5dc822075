"""The Lightning Trainer from the composed config: trainer kwargs, loggers, callbacks, atomic checkpoints.

Distributed settings that are not plain Trainer arguments are decided here:

- ``trainer.sync_batchnorm=true`` normalizes every BatchNorm layer over the global batch on any
  accelerator, CPU/gloo included (:class:`~selfsup.training.sync_batchnorm.GlobalBatchNorm`).
- With no ``ModelCheckpoint`` among the callbacks, checkpointing is off: Lightning is told so, instead
  of adding its own default ModelCheckpoint under ``logs/version_N/checkpoints``.
- Under SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_N.ckpt`` in the run
  directory on SIGUSR1 (sent ``signal_delay_s`` before the time limit, conf/hydra/launcher/slurm.yaml)
  and requeues the job; the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment

from selfsup.training.checkpoint_io import AtomicCheckpointIO
from selfsup.training.sync_batchnorm import GlobalBatchNorm

log = logging.getLogger(__name__)

# The signal SLURM sends before the time limit (sbatch --signal, submitit's signal_delay_s).
REQUEUE_SIGNAL = signal.SIGUSR1


def instantiate_each(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every entry of a config group holding named objects (loggers, callbacks).

    Entries set to null are skipped, so an experiment can drop one (``callbacks.progress_bar=null``).
    """
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def slurm_environment() -> SLURMEnvironment | None:
    """Lightning's SLURM environment with auto-requeue when this process is a SLURM task, else None.

    submitit installs its own SIGUSR1 handler, which requeues without saving a checkpoint, and
    Lightning does not register its handler over an existing one. Under SLURM the handler is reset
    so that Lightning's (save ``hpc_ckpt_N.ckpt``, then ``scontrol requeue``) takes the signal.
    """
    if not SLURMEnvironment.detect():
        return None
    if signal.getsignal(REQUEUE_SIGNAL) not in (None, signal.SIG_DFL):
        log.info("SLURM: Lightning's requeue handler replaces the existing %s handler", REQUEUE_SIGNAL.name)
        signal.signal(REQUEUE_SIGNAL, signal.SIG_DFL)
    return SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL)


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """``cfg.trainer`` with ``cfg.logger`` and ``cfg.callbacks`` attached and checkpoints saved atomically."""
    callbacks = instantiate_each(cfg.get("callbacks"))
    plugins: list[Any] = [AtomicCheckpointIO()]
    layer_sync = GlobalBatchNorm() if cfg.trainer.get("sync_batchnorm") else None
    if layer_sync is not None:
        plugins.append(layer_sync)
    environment = slurm_environment()
    if environment is not None:
        plugins.append(environment)
    kwargs: dict[str, Any] = {
        "logger": instantiate_each(cfg.get("logger")) or False,
        "callbacks": callbacks,
        "plugins": plugins,
        "default_root_dir": cfg.paths.run_dir,
        # GlobalBatchNorm is the LayerSync plugin; Lightning's flag would add torch's CUDA-only one.
        "sync_batchnorm": False,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
    }
    kwargs.update(overrides)
    trainer = instantiate(cfg.trainer, **kwargs)
    if layer_sync is not None:
        layer_sync.device_type = trainer.strategy.root_device.type
    return trainer
