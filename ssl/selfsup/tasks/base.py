"""What every pretext task shares: the encoder, the optimizer from config, logging.

A task subclasses :class:`PretextTask` and implements ``pretext_step``: turn a batch of
base-augmented, normalized images into pretext inputs and targets on the device, run the encoder and
its head, and return the loss with any metrics. Optimizer, schedule and logging live here, once.

The contract (README "Adding a pretext task"; ``tasks/template.py.txt`` is a task to copy):

1. **Constructor.** ``__init__(self, encoder, <task settings>, optim=None, schedule=None)`` and
   ``super().__init__(encoder, optim, schedule)``: the framework builds every task as
   ``task(encoder=..., optim=..., schedule=...)`` with the yaml's values as the other arguments,
   and ``image_size=`` (``data.image_size``, the side of the images it receives) when the
   constructor has that parameter: the task yaml does not repeat it.
2. **Heads are child modules** (``self.head = ...``, or an ``nn.ModuleList``/``nn.ModuleDict``):
   :meth:`PretextTask.heads` returns every child but the encoder, and the optimizer trains exactly
   those and the encoder. A tensor that must be saved but not trained is a buffer.
3. **Refusals in** :meth:`PretextTask.check_input`: raise ``ValueError`` saying why a configuration
   cannot work (image size, encoder family, patch grid); it runs before training and becomes a
   config error naming ``data.image_size``. The constructor raises ``ValueError`` for bad settings.
   A task that feeds its encoder something smaller than the images (tiles, crops) says how large in
   :meth:`PretextTask.encoder_input_size`, so that the encoder is built for it (``auto`` settings).
4. **Metrics.** ``pretext_step`` returns ``StepOutput(loss, {name: scalar})``; they are logged as
   ``train/loss`` and ``train/<name>`` (an accuracy: ``<what>_acc`` in [0, 1], e.g. ``rotation_acc``).
   An accuracy's chance level comes from :meth:`PretextTask.chance_levels`: it is recorded beside
   it in metrics.json, and the sweep summary compares tasks by accuracy against chance, never by loss.
5. **Randomness.** Every random pretext choice (rotation, mask, puzzle) is drawn from the samples'
   keys (:mod:`selfsup.training.randomness`: ``integers``/``uniform``/``bits`` with a *purpose*),
   which the training loader puts in each batch: a sample gets the same targets on one process or
   many, and in a resumed run. Without keys (``pretext_step(images)``, as library users and tests
   call it) the keys are drawn from torch's global generator (``random_keys``). Use a purpose
   constant of that module when the draw means the same, else a constant of the task's own above 100.
   No ``torch.rand*`` on the batch.
6. **The yaml owns every configured value.** ``conf/task/<name>.yaml`` sets ``_target_`` and every
   constructor argument, each with a comment; a Python default that differs from the yaml fails
   ``tests/test_defaults.py``.
7. **Batched, on the device.** Pretext inputs are made from the whole batch at once (no loop over
   images); inputs go through :meth:`PretextTask.encode` (memory format).

Nothing central is edited for a new task: the every-task tests build and train it from its yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from selfsup.encoders.base import Encoder
from selfsup.training.budget import MeasuredNeed
from selfsup.training.optim import OptimSettings, build_optimizer, optimizer_summary
from selfsup.training.schedules import lightning_optimizers

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """A task's loss for one batch and the metrics to log beside it (scalars, detached or not)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class PretextTask(pl.LightningModule):
    """Base of pretext tasks: owns an encoder and a head, trains them on a pretext loss.

    A subclass passes ``encoder``, ``optim`` and ``schedule`` on to this constructor, keeps its heads
    as child modules, implements :meth:`pretext_step` with every random draw from the samples' keys,
    and refuses what it cannot train in :meth:`check_input` (the module docstring lists every rule).

    Args:
        encoder: the encoder being pretrained; exported at the end.
        optim: the optimizer settings (``OptimSettings.from_config(cfg.optim)``); None takes those of
            the shipped ``conf/optim/adamw.yaml``, what ``optim=adamw`` (the default) selects.
        schedule: a ``_partial_`` factory ``(optimizer, total_steps) -> LRScheduler``, or None.
    """

    # What this task needed to beat its random initialization, per image size, in our measurements
    # (benchmarks/README.md): a shorter budget, or a size at which it never did, is warned about before
    # training (selfsup.training.budget). Empty: not measured.
    measured_needs: tuple[MeasuredNeed, ...] = ()

    def __init__(
        self, encoder: Encoder, optim: OptimSettings | None = None, schedule: Callable | None = None
    ) -> None:
        super().__init__()
        # The encoder's weights are in the state dict and its constructor config in the hparams, so a
        # checkpoint alone rebuilds it. Optimizer factories are code, not hparams: the run directory's
        # .hydra/config.yaml records how they were configured.
        self.save_hyperparameters(ignore=["encoder", "optim", "schedule"])
        self.hparams["encoder_config"] = dict(encoder.config)
        self.encoder = encoder
        self.optim = optim if optim is not None else OptimSettings.shipped()
        self.schedule = schedule
        self.memory_format = torch.contiguous_format
        self.lr: float | None = None  # derived in configure_optimizers, logged there

    # -- what a task implements ----------------------------------------------------------------
    def pretext_step(self, images: Tensor, keys: Tensor | None = None) -> StepOutput:
        """Make pretext inputs and targets from ``images`` (B, 3, H, W), normalized, on the device.

        ``keys`` (B,) int64 are the samples' random keys; None draws them from torch's generator.
        """
        raise NotImplementedError

    @classmethod
    def encoder_input_size(cls, image_size: int, settings: Mapping[str, Any]) -> int:
        """The side in px of what this task feeds its encoder, for ``image_size`` px images.

        Called before the encoder is built, with the task's config (``settings``), so that the encoder
        can adapt (``encoder.cifar_stem: auto``, a ViT's ``image_size: auto``). By default the encoder
        sees the images; a task that cuts smaller inputs (tiles, crops) says how large they are.
        Raise ``ValueError`` when ``settings`` cannot work on such images.
        """
        return image_size

    def check_input(self, image_size: int) -> None:
        """Raise ``ValueError`` saying why when this task cannot work on images of ``image_size`` px.

        By default the encoder sees the images themselves; a task that feeds it something else (tiles,
        crops) overrides this to check what the encoder will actually get.
        """
        self.encoder.check_image_size(image_size)

    def chance_levels(self) -> dict[str, float]:
        """Chance level in [0, 1] of each accuracy ``pretext_step`` logs (``{"rotation_acc": 0.25}``)."""
        return {}

    # -- shared --------------------------------------------------------------------------------
    def encode(self, inputs: Tensor) -> Tensor:
        """(N, 3, h, w) -> (N, encoder.out_dim), in the configured memory format."""
        return self.encoder(inputs.contiguous(memory_format=self.memory_format))

    def compile_step(self, mode: str | None = None) -> None:
        """``torch.compile`` :meth:`pretext_step` (inputs, encoder, head and loss) for :meth:`step`.

        The compiled code is the class's function, called with this instance, so a copy of the task
        (``copy.deepcopy``) runs on its own weights; it is not pickled (``__getstate__``) but compiled
        again after unpickling. The weights stay the module's, so checkpoints and the exported
        encoder are unchanged.
        """
        self._compile_mode: str | None = mode
        self._compiled_step = torch.compile(type(self).pretext_step, mode=mode)

    def step(self, images: Tensor, keys: Tensor | None = None) -> StepOutput:
        """:meth:`pretext_step` as training runs it: compiled after :meth:`compile_step`, else eager."""
        compiled = self.__dict__.get("_compiled_step")
        if compiled is not None:
            return compiled(self, images, keys)
        return self.pretext_step(images, keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_compiled_step", None)  # a compiled function cannot be pickled (ddp_spawn pickles)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_compile_mode" in state:
            self.compile_step(state["_compile_mode"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None  # every image of this batch was unreadable and skipped
        out = self.step(images, batch.get("key"))
        batch_size = images.shape[0]
        # sync_dist: the logged values are the mean over all ranks (a no-op on one process).
        # prog_bar=False: Lightning would read progress-bar values back after every batch (a device
        # sync); selfsup's ProgressBar shows them from the logged metrics every log_every_n_steps.
        self.log("train/loss", out.loss, batch_size=batch_size, sync_dist=True)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=batch_size, sync_dist=True)
        return out.loss

    def heads(self) -> list[nn.Module]:
        """Modules trained with the encoder; by default every child but the encoder."""
        return [m for name, m in self.named_children() if name != "encoder"]

    def effective_batch(self) -> int:
        """Images per optimizer step over all devices and accumulation steps."""
        trainer = self.trainer
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device is None:
            raise RuntimeError("the effective batch needs a datamodule with a batch_size")
        return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        optim = self.optim
        effective = self.effective_batch()
        self.lr = optim.lr_for(effective)
        optimizer = build_optimizer(
            optim.optimizer,
            [self.encoder, *self.heads()],
            self.lr,
            optim.weight_decay,
            optim.no_decay_bias_and_norm,
        )
        trainer = self.trainer
        log.info(
            "learning rate %.3g = optim.lr %.3g scaled '%s' by effective batch %d (= %d per device x %d "
            "devices x %d accumulation steps; reference %d); %s",
            self.lr, optim.lr, optim.lr_scaling, effective, effective // (trainer.world_size * trainer.accumulate_grad_batches),
            trainer.world_size, trainer.accumulate_grad_batches, optim.reference_batch, optimizer_summary(optimizer),
        )  # fmt: skip
        if self.schedule is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        return lightning_optimizers(optimizer, self.schedule(optimizer, total_steps=total))
