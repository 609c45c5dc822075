"""The pretraining stage: build and check everything, train the pretext task, export the encoder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from selfsup.atomic import atomic_write_text
from selfsup.config import check_complete, check_training
from selfsup.encoders import export
from selfsup.errors import ConfigError
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, build_encoder, build_task, setup_runtime
from selfsup.training.callbacks import Throughput
from selfsup.training.trainer import build_trainer

log = logging.getLogger(__name__)

# Folder names inside the run directory, for code that imports them; RunDir owns the layout.
ENCODER_DIR = RunDir.default(".").encoder.name
INIT_ENCODER_DIR = RunDir.default(".").encoder_init.name


def resolve_resume(resume: str | None, run: RunDir) -> str | None:
    """The checkpoint to resume from: a path, ``auto`` (the run's configured last checkpoint, if any), or None."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        last = run.last_checkpoint
        if last is None:
            raise ConfigError(
                "resume", "resume=auto needs the last_checkpoint callback (callbacks.last_checkpoint is null)"
            )
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("resume=auto: no %s yet, starting fresh", last)
        return None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise ConfigError("resume", f"checkpoint {path} does not exist (use a .ckpt path, auto, or null)")
    return str(path)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain ``cfg.encoder`` with ``cfg.task`` on ``cfg.data``; export it to ``<run dir>/encoder``.

    The encoder's random initialization is exported too (``<run dir>/encoder_init``), so that
    downstream stages can compare against exactly the starting point.

    Returns:
        The ``pretrain`` section of metrics.json: steps, epochs, time, throughput, final pretext metrics.
    """
    check_complete(cfg)
    run = RunDir.from_config(cfg)
    check_training(cfg)
    setup_runtime(cfg)
    encoder = build_encoder(cfg, check_image_size=False)  # the task checks what its encoder will see
    datamodule = build_datamodule(cfg, ["pretrain"])
    task = build_task(cfg, encoder)
    resume = resolve_resume(cfg.get("resume"), run)
    input_spec = datamodule.input_spec()
    if resume is None:
        export.save(encoder, run.encoder_init, input_spec, {"task": None, "steps": 0, "seed": int(cfg.seed)})
    if cfg.get("channels_last"):
        task.memory_format = torch.channels_last
        task.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        task.encoder.compile()
    throughput = Throughput()
    trainer = build_trainer(cfg)
    trainer.callbacks.append(throughput)  # type: ignore[attr-defined]
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    images = throughput.steps * datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size
    results: dict[str, Any] = {
        "task": cfg.task._target_,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "time_s": round(throughput.seconds, 1),  # this attempt's training loop
        "images_per_s": round(images / throughput.seconds, 1) if throughput.seconds > 0 else None,
        "lr": task.lr,
        "effective_batch": task.effective_batch(),
        "bad_images": len(datamodule.bad_images),
        **{
            k.removeprefix("train/"): round(float(v), 4)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        },
    }
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
