"""The fine-tuning stage: exported encoders, each with a new head, on a label fraction of the train split.

Every encoder is fine-tuned once per seed: the seed draws the label fraction (the same images for
every encoder, so encoders are compared on equal terms), the head's initialization and the data
order. Top-1 is measured on the test split's centre crops. A sweep over ``eval.finetune.freeze_until``
and ``eval.finetune.label_fraction`` writes one metrics.json per job with both values recorded: the
freeze-versus-fine-tune picture of a dataset.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger

from selfsup import progress
from selfsup.config import FINETUNE as KEY
from selfsup.config import build, check_finetune_config, check_finetune_exports, require_encoders, select
from selfsup.data.datamodule import ImageDataModule
from selfsup.data.subsets import source_labels, stratified_fraction
from selfsup.encoders import export
from selfsup.encoders.base import Encoder
from selfsup.eval.finetune import FineTuner, LabeledSplits
from selfsup.eval.results import EncoderFinetune, FinetuneResults
from selfsup.eval.stats import SeedStats
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, setup_runtime
from selfsup.training.optim import derived_lr

log = logging.getLogger(__name__)


def finetune_encoders(
    encoders: Mapping[str, str | Path],
    datamodule: ImageDataModule,
    finetune_cfg: DictConfig,
    run_dir: RunDir,
) -> FinetuneResults:
    """Fine-tune each exported encoder on a label fraction of the train split; top-1 on val and test.

    Every encoder is checked (stages, image size) before any is trained.

    Args:
        encoders: label -> export folder.
        datamodule: with labeled ``train`` and ``test`` splits; brings the classes and image size.
        finetune_cfg: ``eval.finetune``.
        run_dir: training curves go to ``run_dir.finetune_logs(label, seed)``.

    Returns:
        The settings (``freeze_until``, ``label_fraction``, ``seeds``, ...) and, per label, top-1
        over seeds, the frozen stages, the learning rate of each stage, the number of labeled
        training images, steps and time.
    """
    cfg = finetune_cfg
    train_source = datamodule.source("train")
    classes = datamodule.classes()
    freeze_until = cfg.freeze_until
    check_finetune_exports(encoders, freeze_until, datamodule.image_size, float(cfg.drop_path))
    batch_size = int(cfg.batch_size or datamodule.batch_size)
    head_lr = derived_lr(float(cfg.head_lr), cfg.lr_scaling, batch_size, int(cfg.reference_batch))
    encoder_lr = derived_lr(float(cfg.encoder_lr), cfg.lr_scaling, batch_size, int(cfg.reference_batch))
    log.info(
        "fine-tuning: head lr %.3g, encoder lr %.3g (%s-scaled by batch %d over %d), layer decay %s, freeze_until %s, label fraction %s",
        head_lr, encoder_lr, cfg.lr_scaling, batch_size, cfg.reference_batch, cfg.layer_decay, freeze_until, cfg.label_fraction,
    )  # fmt: skip
    labels = source_labels(train_source)
    make_model = _model_factory(cfg, len(classes), head_lr, encoder_lr)
    results: dict[str, EncoderFinetune] = {}
    seeds = [int(seed) for seed in cfg.seeds]
    for label, path in encoders.items():
        started = time.perf_counter()
        runs = []
        for seed in seeds:
            pl.seed_everything(seed, workers=True, verbose=False)  # before the head is initialized
            model = make_model(export.load(path))
            rand_augment = None if cfg.rand_augment is None else [int(v) for v in cfg.rand_augment]
            splits = LabeledSplits(
                datamodule,
                stratified_fraction(labels, cfg.label_fraction, seed),
                batch_size,
                rand_augment=rand_augment,
            )
            # Lightning draws its own bar per run when progress_bar is on: then lines, not a second bar.
            with progress.task(
                f"fine-tuning: {label} / seed {seed}", None, bar=False if cfg.progress_bar else None
            ):
                runs.append(_fit_and_test(model, splits, cfg, run_dir.finetune_logs(label, seed)))
        first = runs[0]
        results[label] = EncoderFinetune(
            top1=SeedStats.of([run["top1"] for run in runs]),
            val=SeedStats.of([run["val_top1"] for run in runs]) if "val_top1" in first else None,
            frozen_stages=tuple(first["frozen_stages"]),
            stage_lr=first["stage_lr"],
            train_images=first["train_images"],
            steps=first["steps"],
            time_s=round(time.perf_counter() - started, 1),
        )
        log.info("%s: fine-tuned top-1 %s", label, results[label].top1.mean_std())
    return FinetuneResults(
        freeze_until=freeze_until,
        label_fraction=float(cfg.label_fraction),
        seeds=tuple(int(s) for s in cfg.seeds),
        epochs=None if cfg.max_steps else int(cfg.epochs),
        max_steps=int(cfg.max_steps) if cfg.max_steps else None,
        batch_size=batch_size,
        head_lr=head_lr,
        encoder_lr=encoder_lr,
        layer_decay=float(cfg.layer_decay),
        num_classes=len(classes),
        image_size=datamodule.image_size,
        encoders=results,
    )


def _model_factory(
    cfg: DictConfig, num_classes: int, head_lr: float, encoder_lr: float
) -> Callable[[Encoder], FineTuner]:
    """``encoder -> FineTuner`` with the settings of ``eval.finetune`` and the derived learning rates."""
    return partial(
        FineTuner,
        num_classes=num_classes,
        freeze_until=cfg.freeze_until,
        head_lr=head_lr,
        encoder_lr=encoder_lr,
        layer_decay=float(cfg.layer_decay),
        weight_decay=float(cfg.weight_decay),
        no_decay_bias_and_norm=bool(cfg.no_decay_bias_and_norm),
        label_smoothing=float(cfg.label_smoothing),
        mixup=float(cfg.mixup),
        cutmix=float(cfg.cutmix),
        drop_path=float(cfg.drop_path),
        random_erasing=float(cfg.random_erasing),
        optimizer=build(f"{KEY}.optimizer", cfg.optimizer),
        schedule=build(f"{KEY}.schedule", cfg.schedule) if cfg.schedule is not None else None,
    )


def _fit_and_test(model: FineTuner, splits: LabeledSplits, cfg: DictConfig, log_dir: Path) -> dict[str, Any]:
    """Train ``model`` on the splits' train images, then score it on val (if any) and test; top-1 in percent.

    Args:
        model: a fresh FineTuner.
        splits: the label fraction to train on and the test split.
        cfg: ``eval.finetune`` (length, device, precision, logging).
        log_dir: where the training curve goes (``metrics.csv``).
    """
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        precision=cfg.precision,
        max_epochs=-1 if cfg.max_steps else int(cfg.epochs),
        max_steps=int(cfg.max_steps or -1),
        logger=CSVLogger(log_dir.parent.parent, name=log_dir.parent.name, version=log_dir.name),
        log_every_n_steps=int(cfg.log_every_n_steps),
        enable_checkpointing=False,
        enable_progress_bar=bool(cfg.progress_bar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=log_dir,
    )
    with warnings.catch_warnings():
        # Frozen stages are in eval mode on purpose (their BatchNorm statistics must not move).
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        trainer.fit(model, datamodule=splits)
    tested = trainer.test(model, datamodule=splits, verbose=False)
    validated = {}
    if splits.data.has("val"):
        val = trainer.test(model, datamodule=splits.scoring("val"), verbose=False)
        validated = {"val_top1": 100 * float(val[0]["test/top1"])}
    return {
        **validated,
        "top1": 100 * float(tested[0]["test/top1"]),
        "frozen_stages": list(model.frozen),
        "stage_lr": model.stage_lrs(),
        "train_images": len(splits.train_dataset()),
        "steps": int(trainer.global_step),
    }


def check_finetune(cfg: DictConfig) -> tuple[dict[str, str], ImageDataModule]:
    """Every check ``selfsup-finetune`` makes before it trains; the encoders and the labeled data."""
    check_finetune_config(cfg)
    encoders = require_encoders(
        cfg, "no encoder to fine-tune; add one with +encoders.<label>=<export folder>"
    )
    check_finetune_exports(
        encoders,
        select(cfg, f"{KEY}.freeze_until"),
        int(select(cfg, "data.image_size")),
        float(select(cfg, f"{KEY}.drop_path")),
    )
    return encoders, build_datamodule(cfg, ["train", "test"])


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """``selfsup-finetune``: fine-tune the exported encoders ``cfg.encoders`` (label -> folder).

    Writes the ``finetune`` section of ``<run dir>/metrics.json`` and returns it.
    """
    encoders, datamodule = check_finetune(cfg)
    setup_runtime(cfg)
    run_dir = RunDir.from_config(cfg)
    results = finetune_encoders(encoders, datamodule, cfg.eval.finetune, run_dir).to_dict()
    run_dir.update_metrics("finetune", results)
    return results
