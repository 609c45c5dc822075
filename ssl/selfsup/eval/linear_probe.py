"""Linear probe on frozen features: BatchNorm without affine parameters, then a linear classifier.

The BatchNorm (MAE's and Goyal et al.'s probing protocol) standardizes each feature with batch
statistics while training and with running statistics at test time; it has no parameters of its own,
so the probe stays linear. Training runs on features held in memory (see ``fit_linear_probe``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearProbe(nn.Module):
    """(B, D) features -> (B, num_classes) logits through BatchNorm1d(affine=False) and Linear."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.norm(features))


@dataclass
class ProbeResult:
    """Top-1 accuracy in percent on the train and test features."""

    train_top1: float
    test_top1: float


@torch.no_grad()
def top1(model: nn.Module, features: Tensor, labels: Tensor, batch_size: int = 4096) -> float:
    """Percentage of ``features`` (N, D) whose arg-max logit equals ``labels`` (N,)."""
    model.eval()
    correct = sum(
        (model(features[i : i + batch_size]).argmax(dim=1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(features), batch_size)
    )
    return 100.0 * correct / max(1, len(features))


def fit_linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """Train a :class:`LinearProbe` with AdamW and a cosine schedule, then measure top-1 accuracy.

    The features are already in memory, so this is a plain loop over index batches: a Lightning
    Trainer would add more per-step overhead than the linear layer itself costs.

    Args:
        train_features: (N, D) float features.
        train_labels: (N,) class indices.
        test_features: (M, D).
        test_labels: (M,).
        num_classes: output classes.
        epochs: passes over the training features.
        batch_size: features per step.
        lr: peak learning rate (cosine decay to zero over all steps).
        weight_decay: AdamW's decoupled weight decay on the linear layer.
        seed: initialization and batch order.
        device: where to train.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LinearProbe(train_features.shape[1], num_classes).to(device)
    x, y = train_features.to(device), train_labels.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(x) // batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return ProbeResult(
        train_top1=top1(model, x, y),
        test_top1=top1(model, test_features.to(device), test_labels.to(device)),
    )
