"""Probes on frozen features: one classifier per layer, trained together on cached features.

By default each head is linear: BatchNorm without affine parameters, then a linear classifier (MAE's
and Goyal et al.'s probing protocol; :mod:`selfsup.eval.probe_heads` has it and RotNet's non-linear
and conv classifiers). Several layers are probed at once, one head per layer, all trained together in
one pass over the data (the multi-layer protocol of Goyal et al. 2019 / VISSL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from selfsup.eval.features import FeatureSet
from selfsup.eval.probe_heads import LINEAR, ProbeHead
from selfsup.training.schedules import warmup_cosine

# ``factory(optimizer, total_steps)`` -> a per-step scheduler (conf/schedule's factories, partially bound).
ScheduleFactory = Callable[[torch.optim.Optimizer, int], LRScheduler]


class MultiLayerProbe(nn.Module):
    """One probe head per layer (linear unless ``head`` says otherwise).

    Args:
        dims: layer name -> feature dimension.
        num_classes: output classes.
        grids: layer name -> pooling grid of its features (the conv head needs it; default 1).
        head: which classifier each layer gets.
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        grids: Mapping[str, int] | None = None,
        head: ProbeHead = LINEAR,
    ) -> None:
        super().__init__()
        grids = grids or {}
        # ModuleDict keys cannot contain dots; layer names never do.
        self.heads = nn.ModuleDict(
            {layer: head.build(dim, grids.get(layer, 1), num_classes) for layer, dim in dims.items()}
        )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """layer -> (B, D) features to layer -> (B, num_classes) logits."""
        return {layer: head(features[layer].float()) for layer, head in self.heads.items()}

    def loss(self, features: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Sum of the heads' cross-entropies: the heads share no parameter, so each learns alone."""
        return sum((F.cross_entropy(logits, labels) for logits in self(features).values()), torch.zeros(()))


PROBE_OPTIMIZERS = ("adamw", "sgd", "lars")


def probe_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The probes' optimizer.

    - ``adamw``: decoupled weight decay.
    - ``sgd``: Nesterov momentum and L2 weight decay, the optimizer of Goyal et al. 2019 and VISSL's
      linear evaluation (lr 0.01 per 256 images, momentum 0.9, weight decay 5e-4).
    - ``lars``: MAE's linear-probe optimizer (its util/lars.py), as timm's ``Lars`` (``pip install
      -e '.[lars]'``): momentum 0.9, trust coefficient 0.001, the layer-wise trust ratio on every
      weight matrix and none on biases and other 1-D parameters, as MAE excludes them.
    """
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "lars":
        return _lars(list(params), lr, weight_decay, momentum)
    raise ValueError(f"probe optimizer must be one of {list(PROBE_OPTIMIZERS)}, got {name!r}")


def _lars(
    params: list[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """timm's LARS with MAE's grouping: adapted weight matrices, plain momentum SGD for 1-D parameters."""
    try:
        from timm.optim import Lars
    except ImportError:
        raise ImportError(LARS_NEEDS_TIMM) from None
    groups = [
        {"params": [p for p in params if p.ndim > 1], "always_adapt": True, "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "always_adapt": False, "weight_decay": 0.0},
    ]
    return Lars([g for g in groups if g["params"]], lr=lr, momentum=momentum, trust_coeff=0.001)


LARS_NEEDS_TIMM = "the lars probe optimizer is timm's: pip install -e '.[lars]' (timm>=0.9)"


def probe_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: ScheduleFactory | None
) -> LRScheduler:
    """``schedule(optimizer, total_steps)``, or without one the probes' default: cosine from lr to zero."""
    if schedule is None:
        return warmup_cosine(optimizer, total_steps, warmup_fraction=0.0)
    return schedule(optimizer, total_steps)


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
    grids: Mapping[str, int] | None = None,
    head: str = "linear",
    head_hidden_dim: int | None = None,
    head_channels: int = 192,
    schedule: ScheduleFactory | None,
) -> dict[str, float]:
    """Train one probe per layer of ``train`` (cosine schedule by default); test top-1 per layer.

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
        val: validation features, scored like ``test``.
        grids: layer -> pooling grid of the features (for ``head.kind == "conv"``).
        head, head_hidden_dim, head_channels: the classifier per layer (:class:`ProbeHead`).
        schedule: the learning rate over the run's steps; None: cosine from lr to zero, no warmup.

    Returns:
        layer -> test top-1 accuracy in percent (and ``val/<layer>`` -> validation top-1 with ``val``).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dims = {layer: t.shape[1] for layer, t in train.features.items()}
    probe = MultiLayerProbe(dims, num_classes, grids, ProbeHead(head, head_hidden_dim, head_channels)).to(
        device
    )
    opt = probe_optimizer(probe.parameters(), optimizer, lr, weight_decay)
    steps_per_epoch = max(1, len(train) // batch_size)  # full batches only (BatchNorm needs 2+ samples)
    total = epochs * steps_per_epoch
    scheduler = probe_schedule(opt, total, schedule)
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
