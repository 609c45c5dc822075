"""Linear probes trained on augmented images through the frozen encoder, instead of cached features.

Each step runs the frozen encoder (eval mode, no gradient) on a freshly augmented batch and trains one
probe head per layer (:mod:`selfsup.eval.probe_heads`: linear by default) on its pooled features, all
heads in the same pass. Slower than cached features (every epoch pays the encoder's forward), closer to the
protocols that train probes with random crops (Goyal et al. 2019, MAE); a Lightning loop, so it runs
on GPUs and under DDP like pretraining.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from selfsup.encoders.base import Encoder
from selfsup.eval.features import pool_feature
from selfsup.eval.linear_probe import MultiLayerProbe, ScheduleFactory, probe_optimizer, probe_schedule
from selfsup.eval.probe_heads import LINEAR, ProbeHead
from selfsup.modes import evaluating
from selfsup.training.schedules import lightning_optimizers


class AugmentedProbe(pl.LightningModule):
    """Frozen encoder + one probe head per layer, trained on augmented batches.

    Args:
        encoder: frozen throughout: no gradient, eval mode (BatchNorm statistics never change).
        dims: layer -> pooled feature dimension.
        grids: layer -> pooling grid.
        num_classes: output classes.
        token_pool: ``cls`` or ``mean`` for token features.
        lr: peak learning rate, cosine-decayed over the run.
        weight_decay: the optimizer's weight decay.
        prepare_batch: turns a transferred batch's uint8 images into normalized floats (the
            DataModule's ``prepare_batch``); None when batches arrive normalized.
        optimizer: ``adamw`` or ``sgd`` (``selfsup.eval.linear_probe.probe_optimizer``).
        head: the classifier per layer (linear by default).
        schedule: the learning rate over the run's steps; None: cosine from lr to zero.
    """

    def __init__(
        self,
        encoder: Encoder,
        dims: Mapping[str, int],
        grids: Mapping[str, int],
        num_classes: int,
        token_pool: str = "cls",
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        prepare_batch: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        optimizer: str = "adamw",
        head: ProbeHead = LINEAR,
        schedule: ScheduleFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "prepare_batch", "head", "schedule"])
        self.prepare_batch = prepare_batch
        self.encoder = encoder.requires_grad_(False).eval()
        self.layers, self.grids, self.token_pool = list(dims), dict(grids), token_pool
        self.probe = MultiLayerProbe(dims, num_classes, grids, head)
        self.accuracy = nn.ModuleDict(
            {layer: MulticlassAccuracy(num_classes, average="micro") for layer in dims}
        )
        self.lr, self.weight_decay, self.optimizer = lr, weight_decay, optimizer
        self.schedule = schedule

    def train(self, mode: bool = True) -> AugmentedProbe:
        """Lightning switches modules to train mode every epoch; the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return self.prepare_batch(batch) if self.prepare_batch is not None else batch

    @torch.no_grad()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalized images -> layer -> (B, D) pooled frozen features."""
        maps = self.encoder.forward_features(images, self.layers, self.token_pool)
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)
        return {
            layer: pool_feature(
                maps[layer], self.grids[layer], self.encoder.layer_token_pool(layer, self.token_pool), prefix
            ).float()
            for layer in self.layers
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch["image"].shape[0] < 2:
            return None  # BatchNorm needs two samples (a batch thinned out by unreadable images)
        loss = self.probe.loss(self.features(batch["image"]), batch["label"])
        self.log("probe/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["image"].shape[0] == 0:
            return
        for layer, logits in self.probe(self.features(batch["image"])).items():
            cast(MulticlassAccuracy, self.accuracy[layer]).update(logits, batch["label"])

    def on_test_epoch_end(self) -> None:
        for layer, module in self.accuracy.items():
            metric = cast(MulticlassAccuracy, module)
            self.log(f"top1/{layer}", 100.0 * metric.compute())
            metric.reset()

    def configure_optimizers(self) -> Any:
        optimizer = probe_optimizer(self.probe.parameters(), self.optimizer, self.lr, self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return lightning_optimizers(optimizer, probe_schedule(optimizer, total, self.schedule))


def dims_of(
    encoder: Encoder, image_size: int, layers: Sequence[str], grids: Mapping[str, int], token_pool: str
) -> dict[str, int]:
    """Pooled feature dimension of each layer for images of ``image_size``."""
    with torch.no_grad(), evaluating(encoder):
        probe = torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device)
        maps = encoder.forward_features(probe, layers, token_pool)
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    return {
        layer: int(
            pool_feature(
                maps[layer], grids[layer], encoder.layer_token_pool(layer, token_pool), prefix
            ).shape[1]
        )
        for layer in layers
    }
