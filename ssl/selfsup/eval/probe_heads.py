"""The classifiers a probe trains on one layer's frozen features: linear, MLP or conv.

- ``linear``: BatchNorm without affine parameters + Linear, the linear probe of MAE and Goyal et al.
  (2019); the BatchNorm has no parameters, so the probe stays linear.
- ``mlp``: RotNet's non-linear classifier (Gidaris et al. 2018; the official code's
  ``NonLinearClassifier.py``, ``cls_type='MultLayer'``): Linear(D, h, no bias), BatchNorm, ReLU,
  Linear(h, h, no bias), BatchNorm, ReLU, Linear(h, classes), with h = min(20 x classes, 2048) unless
  set (200 for CIFAR-10). On the flattened block-2 map of RotNet's NIN (192 x 8 x 8 = 12288).
- ``conv``: RotNet's conv classifier (``cls_type='NIN_ConvBlock3'``): on the (C, g, g) feature map, a
  Network-in-Network block (3x3 conv then two 1x1 convs, each without bias + BatchNorm + ReLU,
  ``channels`` wide), global average pooling and Linear(channels, classes).

The two RotNet heads are initialized as the official code does (``Classifier.initilize``): conv
weights N(0, 2 / (k * k * out_channels)), Linear weights N(0, 2 / out_features), zero biases.
Features arrive flattened, (B, C * g * g) in (C, g, g) order (:func:`~selfsup.eval.features.pool_feature`),
so the conv head needs the layer's pooling grid g to see the map again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

PROBE_HEADS = ("linear", "mlp", "conv")
# What tables, reports and figures call the probes of each head.
HEAD_TITLES = {"linear": "Linear probe", "mlp": "Non-linear probe (MLP)", "conv": "Conv probe (NIN block)"}


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


class MLPProbe(nn.Module):
    """(B, D) features -> (B, num_classes) logits: RotNet's non-linear classifier (two hidden layers)."""

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes),
        )
        rotnet_init(self)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class ConvProbe(nn.Module):
    """(B, C * g * g) flattened maps -> (B, num_classes) logits: a NIN block, global pooling, Linear."""

    def __init__(self, in_dim: int, grid: int, num_classes: int, channels: int) -> None:
        super().__init__()
        if in_dim % (grid * grid):
            raise ValueError(f"{in_dim} features are not a map of {grid}x{grid} cells")
        self.grid, self.in_channels = grid, in_dim // (grid * grid)

        def block(cin: int, kernel: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, channels, kernel, padding=(kernel - 1) // 2, bias=False)
            return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *block(self.in_channels, 3),
            *block(channels, 1),
            *block(channels, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )
        rotnet_init(self)

    def forward(self, features: Tensor) -> Tensor:
        maps = features.reshape(features.shape[0], self.in_channels, self.grid, self.grid)
        return self.layers(maps)


def rotnet_init(module: nn.Module) -> None:
    """The official RotNet classifiers' initialization (He-style normal weights, zero biases)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_features))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ProbeHead:
    """Which classifier each probed layer gets (``eval.linear_probe.head``, ``head_hidden_dim``,
    ``head_channels``).

    Attributes:
        kind: ``linear``, ``mlp`` or ``conv`` (see the module docstring).
        hidden_dim: the MLP's width; None: min(20 x classes, 2048), the official code's rule.
        channels: the conv head's width (192 in RotNet's NIN).
    """

    kind: str
    hidden_dim: int | None
    channels: int

    def __post_init__(self) -> None:
        if self.kind not in PROBE_HEADS:
            raise ValueError(f"probe head must be one of {list(PROBE_HEADS)}, got {self.kind!r}")

    def build(self, in_dim: int, grid: int, num_classes: int) -> nn.Module:
        """The head for one layer of ``in_dim`` features pooled to a ``grid`` x ``grid`` map."""
        if self.kind == "mlp":
            hidden = self.hidden_dim if self.hidden_dim is not None else min(20 * num_classes, 2048)
            return MLPProbe(in_dim, num_classes, hidden)
        if self.kind == "conv":
            return ConvProbe(in_dim, grid, num_classes, self.channels)
        return LinearProbe(in_dim, num_classes)


LINEAR = ProbeHead("linear", None, 192)
