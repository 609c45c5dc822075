"""Fine-tuning an encoder with a new linear head: frozen first stages, per-stage learning rates.

The protocol of MAE's fine-tuning (He et al. 2022, Appendix A.2):

- A new linear head with the downstream data's classes on the pooled features, trained with
  cross-entropy (optionally label-smoothed) on augmented labeled images; top-1 on centre crops.
- Freezing: ``freeze_until`` names the last frozen stage in ``encoder.stage_names``; it and every stage
  before it get no gradient and stay in eval mode, so their BatchNorm layers normalize with, and never
  update, their running statistics (Lightning's ``BaseFinetuning.freeze`` instead normalizes frozen
  BatchNorm layers with batch statistics). Freezing the last stage trains the head alone: a linear
  probe on augmented images.
- Separate learning rates for the head and the encoder, and layer-wise learning-rate decay (Clark et
  al. 2020; BEiT; MAE's ``param_groups_lrd``): of the encoder's n stages in order, stage i (from 0)
  gets ``encoder_lr * layer_decay ** (n - i)`` and the head counts as stage n. For a ViT of depth d
  that is MAE's rule exactly (patch embedding ``decay ** (d + 1)``, block k ``decay ** (d + 1 - k)``),
  except that the final LayerNorm belongs to the last block here and to the head in MAE.
- MAE's regularizers, from torchvision: RandAugment on the training images (keyed, in the loader),
  random erasing of the normalized images, mixup and CutMix (``v2.MixUp`` / ``v2.CutMix``, one of the
  two per batch with equal chance when both are on, MAE's switch probability 0.5; the soft targets
  are label-smoothed like hard ones), and stochastic depth on a ViT's blocks
  (:meth:`ViTEncoder.set_drop_path`).
- Weight decay by the one rule of :mod:`selfsup.training.optim`, as in pretraining: none on biases,
  norm parameters and what the encoder names in ``no_weight_decay()`` (a ViT's class token and
  position embedding: MAE's ``no_weight_decay`` list).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import RandomErasing, v2

from selfsup.data.datamodule import ImageDataModule
from selfsup.data.dataset import ImageDataset
from selfsup.encoders.base import Encoder
from selfsup.training.optim import no_weight_decay_ids, split_weight_decay
from selfsup.training.schedules import lightning_optimizers

log = logging.getLogger(__name__)

ParamGroup = dict[str, Any]
_Self = TypeVar("_Self", bound="FineTuner")


def batch_mixing(mixup: float, cutmix: float, num_classes: int) -> Callable[..., Any] | None:
    """``(images, labels) -> (mixed images, (B, num_classes) soft targets)``, or None when both are off.

    torchvision's MixUp and CutMix (alpha of each Beta distribution); with both on, one of the two per
    batch with equal chance, as MAE's timm Mixup does with switch probability 0.5.
    """
    ways = [v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []
    ways += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    if not ways:
        return None
    return ways[0] if len(ways) == 1 else v2.RandomChoice(ways)


def frozen_stages(stage_names: Sequence[str], freeze_until: str | None) -> tuple[str, ...]:
    """The stages that ``freeze_until`` freezes: it and every stage before it (none for None).

    Raises:
        ValueError: listing the allowed names when ``freeze_until`` is not one of ``stage_names``.
    """
    if freeze_until is None:
        return ()
    if freeze_until not in stage_names:
        raise ValueError(
            f"unknown stage {freeze_until!r}; this encoder's stages are {list(stage_names)} "
            "(or null to fine-tune every layer)"
        )
    return tuple(stage_names[: stage_names.index(freeze_until) + 1])


def freeze(encoder: Encoder, stages: Collection[str]) -> list[nn.Module]:
    """Switch off the gradients of these stages' parameters.

    Returns:
        The frozen stages' modules, which the caller keeps in eval mode.
    """
    modules: list[nn.Module] = []
    for name, items in encoder.stage_modules():
        if name in stages:
            for item in items:
                item.requires_grad_(False)
                if isinstance(item, nn.Module):
                    modules.append(item)
    return modules


def decay_groups(
    name: str,
    modules: Sequence[nn.Module | nn.Parameter],
    lr: float,
    weight_decay: float,
    no_decay_bias_and_norm: bool = True,
    exempt: Collection[int] = (),
) -> list[ParamGroup]:
    """Optimizer groups ``name`` (decayed) and ``name/no_decay`` of the trainable parameters; empty ones left out.

    Args:
        modules: modules and loose parameters (a stage's items from ``stage_modules``).
        exempt: ids of parameters named by a ``no_weight_decay()`` (:func:`no_weight_decay_ids` of
            the modules that hold them, e.g. the whole encoder).
    """
    items = list(modules)
    params = [p for item in items for p in ([item] if isinstance(item, nn.Parameter) else item.parameters())]
    exempt = set(exempt) | no_weight_decay_ids(m for m in items if isinstance(m, nn.Module))
    decay, no_decay = split_weight_decay(params, exempt, no_decay_bias_and_norm)
    candidates = [(name, decay, weight_decay), (f"{name}/no_decay", no_decay, 0.0)]
    return [{"name": n, "params": p, "lr": lr, "weight_decay": wd} for n, p, wd in candidates if p]


def stage_param_groups(
    encoder: Encoder,
    lr: float,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_bias_and_norm: bool = True,
) -> list[ParamGroup]:
    """Optimizer groups of the encoder's trainable parameters: per stage, decayed and not decayed.

    Stage i (from 0) of n gets ``lr * layer_decay ** (n - i)``; stages without trainable parameters
    (frozen ones) get no group. Groups are named ``<stage>`` and ``<stage>/no_decay``.

    Raises:
        ValueError: when a trainable parameter of the encoder belongs to no stage (it would silently
            never train): the encoder's ``stage_modules`` is incomplete.
    """
    stages = encoder.stage_modules()
    exempt = no_weight_decay_ids([encoder])
    groups: list[ParamGroup] = []
    for i, (name, items) in enumerate(stages):
        scale = layer_decay ** (len(stages) - i)
        groups += decay_groups(name, items, lr * scale, weight_decay, no_decay_bias_and_norm, exempt)
    grouped = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and id(p) not in grouped]
    if missing:
        raise ValueError(
            f"{type(encoder).__name__}.stage_modules() leaves out trainable parameters {missing}"
        )
    return groups


class FineTuner(pl.LightningModule):
    """An encoder and a new linear head, trained together on labeled images.

    Args:
        encoder: the encoder to fine-tune (e.g. ``selfsup.encoders.load(path)``); its stages up to
            ``freeze_until`` are frozen here.
        num_classes: classes of the downstream data.
        freeze_until: last frozen stage from ``encoder.stage_names``, or None to train every layer.
        head_lr: learning rate of the head.
        encoder_lr: learning rate of the encoder's stages before layer-wise decay.
        layer_decay: stage i of n gets ``encoder_lr * layer_decay ** (n - i)``; 1.0 switches it off.
        weight_decay: for weights; biases, norm parameters and what ``no_weight_decay()`` names get none.
        no_decay_bias_and_norm: exempt those from weight decay (MAE, timm); false decays everything.
        label_smoothing: of the cross-entropy targets.
        mixup: Beta alpha of mixup (MAE: 0.8); 0 switches it off.
        cutmix: Beta alpha of CutMix (MAE: 1.0); 0 switches it off.
        drop_path: stochastic-depth rate of a ViT's last block (MAE ViT-B: 0.1); needs
            ``encoder.set_drop_path``.
        random_erasing: probability of erasing one random rectangle of each normalized training
            image with N(0, 1) pixels (torchvision's RandomErasing with ``value='random'``, timm's
            ``pixel`` mode; MAE: 0.25), before mixing.
        optimizer: ``factory(param_groups, lr=head_lr)``, e.g. ``torch.optim.AdamW`` or the
            ``_partial_`` one of conf/eval/finetune.yaml.
        schedule: ``factory(optimizer, total_steps=...)`` returning a per-step scheduler, or None for
            a constant rate (conf/eval/finetune.yaml's is a warmup-cosine).

    Example:
        >>> model = FineTuner(selfsup.encoders.load(path), num_classes=10, freeze_until="stage2",
        ...                   optimizer=torch.optim.AdamW, schedule=None)
        >>> model(images).shape  # images: (B, 3, H, W), normalized
        torch.Size([B, 10])
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        freeze_until: str | None = None,
        head_lr: float = 1e-3,
        encoder_lr: float = 1e-3,
        layer_decay: float = 1.0,
        weight_decay: float = 0.05,
        no_decay_bias_and_norm: bool = True,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        drop_path: float = 0.0,
        random_erasing: float = 0.0,
        *,
        optimizer: Callable[..., Optimizer],
        schedule: Callable[..., Any] | None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "optimizer", "schedule"])
        self.hparams["encoder_config"] = dict(encoder.config)
        if drop_path > 0:
            set_drop_path = getattr(encoder, "set_drop_path", None)
            if set_drop_path is None:
                raise ValueError(f"{type(encoder).__name__} has no stochastic depth; drop_path must be 0")
            set_drop_path(drop_path)
        self.mix = batch_mixing(mixup, cutmix, num_classes)
        self.erase = (
            RandomErasing(p=random_erasing, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value="random")
            if random_erasing > 0
            else None
        )
        self.frozen = frozen_stages(encoder.stage_names, freeze_until)
        self.encoder = encoder
        self._frozen_modules = freeze(encoder, self.frozen)
        self.head = nn.Linear(encoder.out_dim, num_classes)
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.train_top1 = MulticlassAccuracy(num_classes, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, average="micro")
        self.train()  # exported encoders load in eval mode

    def train(self: _Self, mode: bool = True) -> _Self:
        """Set the mode of every module except the frozen stages, which always stay in eval mode.

        Lightning switches modes through this method (and restores each module's own mode after an
        evaluation loop), so frozen BatchNorm layers keep normalizing with their running statistics
        without updating them, and dropout in frozen blocks stays off, whatever the loop does.
        """
        super().train(mode)
        for module in getattr(self, "_frozen_modules", ()):
            module.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalized images -> (B, num_classes) logits."""
        return self.head(self.encoder(images))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return None  # every image of this batch was unreadable and skipped
        targets: Tensor = labels
        if self.erase is not None:
            images = torch.stack([self.erase(image) for image in images])
        if self.mix is not None and images.shape[0] > 1:
            images, targets = self.mix(images, labels)  # (B, num_classes) soft targets
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams["label_smoothing"])
        self.train_top1(logits, labels if targets is labels else targets.argmax(dim=1))
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train/top1", self.train_top1, prog_bar=True, batch_size=images.shape[0])
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return
        self.test_top1(self(images), labels)
        self.log("test/top1", self.test_top1, on_step=False, on_epoch=True, batch_size=images.shape[0])

    def param_groups(self) -> list[ParamGroup]:
        """Optimizer groups: the encoder's trainable stages (layer-wise decayed), then the head."""
        hp = self.hparams
        groups = stage_param_groups(
            self.encoder,
            hp["encoder_lr"],
            hp["layer_decay"],
            hp["weight_decay"],
            hp["no_decay_bias_and_norm"],
        )
        return groups + decay_groups(
            "head", [self.head], hp["head_lr"], hp["weight_decay"], hp["no_decay_bias_and_norm"]
        )

    def stage_lrs(self) -> dict[str, float | None]:
        """Learning rate of each encoder stage before any schedule (None when frozen), and the head's."""
        lrs: dict[str, float | None] = dict.fromkeys(self.encoder.stage_names)
        for group in self.param_groups():
            lrs[group["name"].removesuffix("/no_decay")] = group["lr"]
        return lrs

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory
        optimizer = factory(self.param_groups(), lr=self.hparams["head_lr"])
        log.info("fine-tuning learning rate per stage (None: frozen): %s", self.stage_lrs())
        if self.schedule is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        return lightning_optimizers(optimizer, self.schedule(optimizer, total_steps=total))


class LabeledSplits(pl.LightningDataModule):
    """Fine-tuning data from an :class:`ImageDataModule`.

    The train split (or the subset ``train_indices`` of it, e.g. a label fraction) with the
    datamodule's training augmentation, shuffled; the test split centre-cropped, in order. Batches are
    normalized on the device by the datamodule, as in every other stage.

    Args:
        data: with labeled ``train`` and ``test`` splits.
        train_indices: indices into the train split, or None for all of it.
        batch_size: images per step (default: the datamodule's).
        test_split: the split ``test_dataloader`` scores: ``test``, or ``val``.
        rand_augment: ``(num_ops, magnitude)`` of RandAugment on the training images, or None.
    """

    def __init__(
        self,
        data: ImageDataModule,
        train_indices: Sequence[int] | Tensor | None = None,
        batch_size: int | None = None,
        test_split: str = "test",
        rand_augment: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.data, self.test_split, self.rand_augment = data, test_split, rand_augment
        self.train_indices = None if train_indices is None else [int(i) for i in train_indices]
        self.batch_size = batch_size or data.batch_size

    def train_dataset(self) -> ImageDataset | Subset:
        dataset = ImageDataset(
            self.data.source("train"), self.data.train_augmentation(self.rand_augment), self.data.on_bad_image
        )
        return dataset if self.train_indices is None else Subset(dataset, self.train_indices)

    def train_dataloader(self) -> DataLoader:
        # A last batch of one image would stop BatchNorm in train mode: drop the incomplete last batch
        # (the datamodule's loader keeps a subset smaller than one batch whole).
        return self.data.loader(
            self.train_dataset(), shuffle=True, drop_last=True, batch_size=self.batch_size
        )

    def test_dataloader(self) -> DataLoader:
        return self.data.labeled_dataloader(self.test_split, augment=False, batch_size=self.batch_size)

    def scoring(self, split: str) -> LabeledSplits:
        """The same training images, scoring ``split`` instead."""
        return LabeledSplits(self.data, self.train_indices, self.batch_size, split, self.rand_augment)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return self.data.prepare_batch(batch)
