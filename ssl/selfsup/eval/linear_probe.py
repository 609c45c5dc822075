"""Linear probes on frozen features: BatchNorm without affine parameters, then a linear classifier.

The BatchNorm (MAE's and Goyal et al.'s probing protocol) standardizes each feature with batch
statistics while training and with running statistics at test time; it has no parameters of its own,
so each probe stays linear. Several layers are probed at once, one head per layer, all trained
together in one pass over the data (the multi-layer protocol of Goyal et al. 2019 / VISSL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.eval.features import FeatureSet
from selfsup.training.schedules import warmup_cosine


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


class MultiLayerProbe(nn.Module):
    """One :class:`LinearProbe` per layer.

    Args:
        dims: layer name -> feature dimension.
        num_classes: output classes.
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        # ModuleDict keys cannot contain dots; layer names never do.
        self.heads = nn.ModuleDict({layer: LinearProbe(dim, num_classes) for layer, dim in dims.items()})

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """layer -> (B, D) features to layer -> (B, num_classes) logits."""
        return {layer: head(features[layer].float()) for layer, head in self.heads.items()}

    def loss(self, features: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Sum of the heads' cross-entropies: the heads share no parameter, so each learns alone."""
        return sum((F.cross_entropy(logits, labels) for logits in self(features).values()), torch.zeros(()))


PROBE_OPTIMIZERS = ("adamw", "sgd")


def probe_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The probes' optimizer: ``adamw`` (decoupled weight decay), or ``sgd`` with momentum and L2 weight
    decay, the optimizer of Goyal et al. 2019 and VISSL's linear evaluation (lr 0.01 per 256 images,
    momentum 0.9, weight decay 5e-4), for numbers comparable with their tables."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"probe optimizer must be one of {list(PROBE_OPTIMIZERS)}, got {name!r}")


@torch.no_grad()
def top1_per_layer(
    probe: MultiLayerProbe, data: FeatureSet, batch_size: int = 4096, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Percentage of ``data`` whose arg-max logit equals its label, per layer."""
    probe.eval()
    correct = dict.fromkeys(probe.heads, 0)
    for start in range(0, len(data), batch_size):
        batch = {
            layer: t[start : start + batch_size].to(device)
            for layer, t in data.features.items()
            if layer in probe.heads
        }
        labels = data.labels[start : start + batch_size].to(device)
        for layer, logits in probe(batch).items():
            correct[layer] += int((logits.argmax(dim=1) == labels).sum())
    return {layer: 100.0 * n / max(1, len(data)) for layer, n in correct.items()}


def fit_linear_probes(
    train: FeatureSet,
    test: FeatureSet,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
    optimizer: str = "adamw",
    on_epoch: Callable[[], None] | None = None,
    val: FeatureSet | None = None,
) -> dict[str, float]:
    """Train one probe per layer of ``train`` with a cosine schedule; test top-1 per layer.

    With ``val``, the same trained probes are scored on it too, under ``val/<layer>`` keys.

    The features are already in memory, so this is a plain loop over index batches: a Lightning
    Trainer would add more per-step overhead than the linear layers themselves cost.

    Args:
        train: features (layer -> (N, D_layer), any float dtype) and labels (N,).
        test: the same layers for the test images.
        num_classes: output classes.
        epochs: passes over the training features.
        batch_size: features per step.
        lr: peak learning rate (cosine decay to zero over all steps).
        weight_decay: AdamW's decoupled or SGD's L2 weight decay (the BatchNorm has no parameters).
        seed: initialization and batch order.
        device: where to train.
        optimizer: ``adamw`` or ``sgd`` (:func:`probe_optimizer`).
        on_epoch: called after each epoch (progress reporting).

    Returns:
        layer -> test top-1 accuracy in percent (and ``val/<layer>`` -> validation top-1 with ``val``).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = MultiLayerProbe({layer: t.shape[1] for layer, t in train.features.items()}, num_classes).to(
        device
    )
    opt = probe_optimizer(probe.parameters(), optimizer, lr, weight_decay)
    steps_per_epoch = max(1, len(train) // batch_size)  # full batches only (BatchNorm needs 2+ samples)
    total = epochs * steps_per_epoch
    scheduler = warmup_cosine(opt, total, warmup_fraction=0.0)  # cosine from lr to zero, no warmup
    features = {layer: t.to(device) for layer, t in train.features.items()}
    labels = train.labels.to(device)
    for _ in range(epochs):
        probe.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = probe.loss({layer: t[idx] for layer, t in features.items()}, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
        if on_epoch is not None:
            on_epoch()
    scores = top1_per_layer(probe, test, device=device)
    if val is not None:
        scores |= {f"val/{layer}": top1 for layer, top1 in top1_per_layer(probe, val, device=device).items()}
    return scores
