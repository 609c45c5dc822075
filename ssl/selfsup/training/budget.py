"""What a pretraining budget buys on the user's data, printed before most of it is spent.

A fixed number of steps means different things on different data: 400 steps of 64 images are 2.6
epochs of the embedded 10k-image set and a quarter of an epoch of a 100k-image folder. After a few
steps :class:`BudgetReport` measures images per second and says which limit ends the run
(``trainer.max_steps``, ``max_epochs`` or ``max_time``), how many passes over the pretraining images
that is and how long it will take; it warns when that is fewer epochs than the task needed to beat
its random initialization in our measurements at the run's image size, or when at that size it never
did within the budgets we measured (:attr:`~selfsup.tasks.base.PretextTask.measured_needs`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasuredNeed:
    """What a task needed to beat its random initialization at one image size, in our measurements.

    Attributes:
        image_size: the pretraining images' side (``data.image_size``).
        epochs: fewest epochs over the pretraining images after which the pretrained encoder probed
            above its random initialization at every probed layer, on validation; None when it did
            not within ``tried``.
        tried: the longest budget measured at this size, in epochs.
        encoder: the encoder class it was measured with (``ResNetEncoder``); None: any encoder.
            Another encoder learns at another pace, so the measurement says nothing about it.
        encoder_config: the constructor settings it was measured with, as (name, value) pairs
            (``(("depth", 18),)``): a ResNet-50 is not the ResNet-18 that was measured.
        where: where the measurement is written down.
    """

    image_size: int
    epochs: float | None
    tried: float
    encoder: str | None = None
    encoder_config: tuple[tuple[str, Any], ...] = ()
    where: str = "benchmarks/README.md"

    def __post_init__(self) -> None:
        if self.encoder_config and self.encoder is None:
            raise ValueError(
                "a MeasuredNeed with encoder_config names the encoder class it was measured with"
            )

    def applies_to(self, encoder: str, config: Mapping[str, Any]) -> bool:
        """Whether an encoder of class ``encoder`` built with ``config`` is the one measured."""
        if self.encoder is None:
            return True
        return encoder == self.encoder and all(config.get(k) == v for k, v in self.encoder_config)


def for_encoder(
    needs: tuple[MeasuredNeed, ...], encoder: str, config: Mapping[str, Any] | None = None
) -> tuple[MeasuredNeed, ...]:
    """The measurements that apply to an encoder of class ``encoder`` built with ``config`` (its
    constructor settings, :attr:`Encoder.config`): its own, and those for any encoder."""
    return tuple(n for n in needs if n.applies_to(encoder, config or {}))


def need_at(needs: tuple[MeasuredNeed, ...], image_size: int) -> MeasuredNeed | None:
    """The measurement at ``image_size``, or None when the task was not measured at that size."""
    return next((n for n in needs if n.image_size == image_size), None)


@dataclass(frozen=True)
class Budget:
    """The run's length as the first steps predict it.

    Attributes:
        images_per_s: source images per second over all devices, measured.
        steps: optimizer steps the run will take (the limit that binds first).
        limit: which setting binds, e.g. ``trainer.max_steps=400``.
        epochs: passes over the pretraining images those steps make.
        seconds: estimated time of the whole training loop.
    """

    images_per_s: float
    steps: int
    limit: str
    epochs: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def plan(
    *,
    images_per_s: float,
    images_per_step: int,
    dataset_size: int,
    steps_per_epoch: int,
    steps_done: int,
    max_steps: int | None,
    max_epochs: int | None,
    time_left_s: float | None,
) -> Budget:
    """The limit that ends the run first, and what it covers.

    Args:
        images_per_s: measured throughput (images of the dataset, all devices).
        images_per_step: images per optimizer step over all devices and accumulation.
        dataset_size: pretraining images.
        steps_per_epoch: optimizer steps in one epoch.
        steps_done: steps taken so far.
        max_steps: ``trainer.max_steps`` (None or -1: no limit).
        max_epochs: ``trainer.max_epochs`` (None or -1: no limit).
        time_left_s: what ``trainer.max_time`` leaves, or None.
    """
    limits: list[tuple[int, str]] = []
    if max_steps is not None and max_steps > 0:
        limits.append((max_steps, f"trainer.max_steps={max_steps}"))
    if max_epochs is not None and max_epochs > 0:
        limits.append((max_epochs * steps_per_epoch, f"trainer.max_epochs={max_epochs}"))
    if time_left_s is not None:
        steps_per_s = images_per_s / images_per_step
        limits.append((steps_done + math.floor(time_left_s * steps_per_s), "trainer.max_time"))
    if not limits:
        raise ValueError("the run has no length: set trainer.max_steps, max_epochs or max_time")
    steps, limit = min(limits)
    return Budget(
        images_per_s=images_per_s,
        steps=steps,
        limit=limit,
        epochs=steps * images_per_step / dataset_size,
        seconds=steps * images_per_step / images_per_s,
    )


class BudgetReport(pl.Callback):
    """Measure images/s over a few early steps, then log the :class:`Budget` and warn if it is short.

    Args:
        dataset_size: pretraining images.
        images_per_step: images per optimizer step over all devices and accumulation steps.
        needs: the task's measurements (:attr:`PretextTask.measured_needs`).
        task: the task's name, for the warning.
        image_size: the run's ``data.image_size``: which measurement applies.
        skip_steps: steps left out of the measurement (start-up: workers, caches, allocations).
        measure_steps: steps measured after those.
    """

    def __init__(
        self,
        dataset_size: int,
        images_per_step: int,
        needs: tuple[MeasuredNeed, ...],
        task: str,
        image_size: int,
        skip_steps: int = 3,
        measure_steps: int = 10,
    ) -> None:
        self.dataset_size, self.images_per_step = dataset_size, images_per_step
        self.needs, self.task, self.image_size = needs, task, image_size
        self.skip_steps, self.measure_steps = skip_steps, measure_steps
        self.budget: Budget | None = None
        self._first: int | None = None
        self._started: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.budget is not None:
            return
        step = trainer.global_step
        if self._first is None:
            self._first = step
        if step == self._first + self.skip_steps:
            self._started = time.perf_counter()
        elif self._started is not None and step >= self._first + self.skip_steps + self.measure_steps:
            seconds = time.perf_counter() - self._started
            images = (step - self._first - self.skip_steps) * self.images_per_step
            self.budget = plan(
                images_per_s=images / seconds,
                images_per_step=self.images_per_step,
                dataset_size=self.dataset_size,
                steps_per_epoch=max(1, int(trainer.num_training_batches) // trainer.accumulate_grad_batches),
                steps_done=step,
                max_steps=trainer.max_steps,
                max_epochs=trainer.max_epochs,
                time_left_s=_time_left(trainer),
            )
            if trainer.is_global_zero:
                self.report(self.budget)

    def report(self, budget: Budget) -> None:
        """One line with the estimate; a warning when it is fewer epochs than the task needed."""
        log.info(
            "budget: %s ends the run after %d steps = %.2f epochs of the %d pretraining images, about %.1f "
            "min at the measured %.0f images/s",
            budget.limit, budget.steps, budget.epochs, self.dataset_size, budget.seconds / 60,
            budget.images_per_s,
        )  # fmt: skip
        warning = short_budget_warning(self.needs, self.task, self.image_size, budget.epochs)
        if warning is not None:
            log.warning(warning)


RAISE_IT = (
    "Raise trainer.max_steps or trainer.max_epochs (the schedule is laid out over them), and add "
    "a time budget if you want one: trainer.max_time=00:02:00:00 stops the run when it runs out first"
)


def short_budget_warning(
    needs: tuple[MeasuredNeed, ...], task: str, image_size: int, epochs: float
) -> str | None:
    """The warning for a budget of ``epochs`` at ``image_size`` px, or None when nothing says it is short."""
    need = need_at(needs, image_size)
    if need is None:
        return None
    if need.epochs is None:
        won = [n for n in needs if n.epochs is not None]
        elsewhere = "".join(
            f"; at {n.image_size} px it did after {n.epochs:.2f} (data.image_size={n.image_size})"
            for n in won
        )
        return (
            f"at {image_size} px {task} did not beat its random initialization at every probed layer "
            f"within {need.tried:.2f} "
            f"epochs in our measurements ({need.where}){elsewhere}: the encoder may come out no better "
            f"than random. This run covers {epochs:.2f} epochs."
        )
    if epochs < need.epochs:
        return (
            f"the budget covers {epochs:.2f} epochs of the pretraining images, fewer than the "
            f"{need.epochs:.2f} that {task} needed to beat its random initialization at {image_size} px in "
            f"our measurements ({need.where}): the encoder may come out no better than random. {RAISE_IT}"
        )
    return None


def _time_left(trainer: pl.Trainer) -> float | None:
    """Seconds ``trainer.max_time`` leaves for training, or None when no time limit is set."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Timer):
            left = callback.time_remaining("train")
            return float(left) if left is not None else None
    return None
