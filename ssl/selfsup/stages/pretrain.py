"""The pretraining stage: build and check everything, train the pretext task, export the encoder.

Faults lose nothing: one process at a time writes a run directory (its lock), leftover temporary
files of a killed run are removed, a corrupt ``last.ckpt`` falls back to the newest readable
checkpoint, NaN/inf stops the run before anything non-finite is saved, Ctrl-C saves a checkpoint, a
full disk is named, and ``resume=auto`` finishes what is missing (the export of a trained run) without
touching what is done (a finished run's metrics.json).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from selfsup.atomic import atomic_write_text, raise_if_disk_full, remove_stale_temps
from selfsup.config import check_complete, select
from selfsup.encoders import export
from selfsup.errors import CheckpointError, ConfigError, Interrupted
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_pretraining, setup_runtime
from selfsup.training.budget import BudgetReport, for_encoder
from selfsup.training.callbacks import Throughput
from selfsup.training.checkpoint_io import check_checkpoint, newest_readable
from selfsup.training.faults import GracefulInterrupt, NonFiniteGuard
from selfsup.training.performance import apply_performance_switches
from selfsup.training.trainer import build_trainer

log = logging.getLogger(__name__)


def resolve_resume(resume: str | None, run: RunDir) -> str | None:
    """The checkpoint to resume from: a path, ``auto`` (the run's configured last checkpoint, if any), or None.

    With ``auto``, an unreadable ``last.ckpt`` (empty, truncated) falls back to the newest readable
    checkpoint of its folder, with a warning naming both; a checkpoint named explicitly must be readable.
    """
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        chosen = _auto_checkpoint(run)
        # Lightning's SLURM requeue saves hpc_ckpt_N.ckpt in the run directory on SIGUSR1: resume from it
        # when it is newer than the last periodic checkpoint (Lightning ignores it once a path is given).
        requeued = newest_readable(run.root)
        if requeued is not None and (
            chosen is None or requeued.stat().st_mtime_ns > chosen.stat().st_mtime_ns
        ):
            chosen = requeued
        if chosen is not None:
            log.info("resuming from %s", chosen)
        return None if chosen is None else str(chosen)
    path = Path(resume).expanduser()
    if not path.is_file():
        raise ConfigError("resume", f"checkpoint {path} does not exist (use a .ckpt path, auto, or null)")
    check_checkpoint(path)
    return str(path)


def _auto_checkpoint(run: RunDir) -> Path | None:
    """``resume=auto``'s checkpoint: the configured last one, or the newest readable one beside it."""
    last = run.last_checkpoint
    if last is None:
        raise ConfigError(
            "resume", "resume=auto needs the last_checkpoint callback (callbacks.last_checkpoint is null)"
        )
    if not last.is_file():
        log.info("resume=auto: no %s yet", last)
        return None
    try:
        check_checkpoint(last)
    except CheckpointError as e:
        fallback = newest_readable(last.parent, exclude=last)
        if fallback is None:
            raise CheckpointError(
                f"{e}, and no other readable checkpoint is in {last.parent}; delete it to start "
                "afresh, or pass resume=<a .ckpt path>"
            ) from None
        log.warning("%s; resuming from the newest readable checkpoint %s instead", e, fallback)
        return fallback
    return last


def first_process() -> bool:
    """Whether this is the first process of a (possibly distributed) run, before any Trainer exists.

    torchrun sets RANK, SLURM sets SLURM_PROCID, Lightning's own launcher LOCAL_RANK and NODE_RANK.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return (
        int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0
    )


def finished(cfg: DictConfig, recorded: dict[str, Any] | None, run: RunDir) -> bool:
    """Whether the run already trained to the configured length and exported its encoder."""
    if not recorded or not (run.encoder / export.CONFIG_FILE).is_file():
        return False
    max_steps, max_epochs = select(cfg, "trainer.max_steps"), select(cfg, "trainer.max_epochs")
    by_steps = max_steps is not None and max_steps > 0 and recorded.get("steps", 0) >= max_steps
    by_epochs = max_epochs is not None and max_epochs > 0 and recorded.get("epochs", 0) >= max_epochs
    return bool(by_steps or by_epochs)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain ``cfg.encoder`` with ``cfg.task`` on ``cfg.data``; export it to ``<run dir>/encoder``.

    The encoder's random initialization is exported too (``<run dir>/encoder_init``), so that
    downstream stages can compare against exactly the starting point.

    Returns:
        The ``pretrain`` section of metrics.json: steps, epochs, time, throughput, final pretext metrics.
    """
    check_complete(cfg)
    run = RunDir.from_config(cfg)
    setup_runtime(cfg)
    parts = build_pretraining(cfg)
    task, datamodule = parts.task, parts.datamodule
    trainer = _build_trainer(cfg)
    with run.locked() if first_process() else contextlib.nullcontext():
        for folder in (run.root, run.checkpoint_dir, run.encoder, run.encoder_init):
            if folder is not None:
                for stale in remove_stale_temps(folder):
                    log.info("removed a temporary file left by an earlier run: %s", stale)
        recorded = run.read_metrics().get("pretrain")
        if cfg.get("resume") == "auto" and finished(cfg, recorded, run):
            log.info(
                "resume=auto: %s has finished training and exported its encoder; nothing to do", run.root
            )
            return dict(recorded or {})
        try:
            return _train_and_export(cfg, run, trainer, task, datamodule)
        except OSError as e:
            raise_if_disk_full(e, e.filename or run.root)
            raise


def _build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer, with an invalid trainer, callback or logger setting named by its config key."""
    try:
        return build_trainer(cfg)
    except InstantiationException as e:
        text = str(e)
        key = text.rpartition("full_key: ")[2].split()[0] if "full_key: " in text else "trainer"
        cause = e.__cause__ if e.__cause__ is not None else e
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(key, f"cannot build it: {reason}") from None


def _train_and_export(
    cfg: DictConfig, run: RunDir, trainer: pl.Trainer, task: Any, datamodule: Any
) -> dict[str, Any]:
    resume = resolve_resume(cfg.get("resume"), run)
    input_spec = datamodule.input_spec()
    if resume is None:
        export.save(
            task.encoder, run.encoder_init, input_spec, {"task": None, "steps": 0, "seed": int(cfg.seed)}
        )
    apply_performance_switches(
        task, channels_last=bool(cfg.channels_last), compile=bool(cfg.compile), compile_mode=cfg.compile_mode
    )
    throughput = Throughput()
    interrupt = GracefulInterrupt(run.last_checkpoint)
    guard = NonFiniteGuard(
        int(select(cfg, "faults.skip_nonfinite")),
        run.checkpoint_dir,
        int(select(cfg, "faults.check_every_n_steps")),
    )
    images_per_step = datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size
    budget = BudgetReport(
        len(datamodule.source("pretrain")),
        images_per_step,
        for_encoder(task.measured_needs, type(task.encoder).__name__, task.encoder.config),
        type(task).__name__,
        datamodule.image_size,
    )
    trainer.callbacks.extend([guard, interrupt, throughput, budget])  # type: ignore[attr-defined]
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    if interrupt.requested:
        raise Interrupted(_resume_hint(interrupt, run), interrupt.signum or signal.SIGINT)
    images = throughput.steps * images_per_step
    results: dict[str, Any] = {
        "task": cfg.task._target_,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "time_s": round(throughput.seconds, 1),  # this attempt's training loop
        "images_per_s": round(images / throughput.seconds, 1) if throughput.seconds > 0 else None,
        "lr": task.lr,
        "effective_batch": task.effective_batch(),
        "bad_images": len(datamodule.bad_images),
        "skipped_nonfinite_steps": guard.skipped,
        **{
            k.removeprefix("train/"): round(float(v), 4)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        },
        "chance": task.chance_levels(),  # of the accuracies above: what guessing scores
    }
    if budget.budget is not None:
        results["budget"] = budget.budget.to_dict()
    if trainer.is_global_zero:
        meta = {
            "task": cfg.task._target_,
            "steps": results["steps"],
            "seed": int(cfg.seed),
            "run_dir": str(run.root),
        }
        export.save(task.encoder, run.encoder, input_spec, meta)
        if datamodule.bad_images:
            atomic_write_text(run.bad_images, "\n".join(sorted(datamodule.bad_images)) + "\n")
            log.warning(
                "%d unreadable images were skipped; listed in %s", len(datamodule.bad_images), run.bad_images
            )
        run.update_metrics("pretrain", results)
    return results


def _resume_hint(interrupt: GracefulInterrupt, run: RunDir) -> str:
    """Where the interrupted run's checkpoint is and the command that resumes it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = [
            o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "hydra.run.dir="))
        ]
    except ValueError:  # not run from the command line
        overrides = []
    if interrupt.saved is None:
        return f"stopped at step {interrupt.step}; checkpointing is off, so nothing was saved"
    command = " ".join(["selfsup-pretrain", *overrides, "resume=auto", f"hydra.run.dir={run.root}"])
    return f"stopped at step {interrupt.step}; saved {interrupt.saved}; resume with: {command}"
