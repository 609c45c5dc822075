"""Small heads that tasks put on top of encoder features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    in_dim: int, hidden_dims: Sequence[int], out_dim: int, batch_norm: bool = True, dropout: float = 0.0
) -> nn.Sequential:
    """Linear layers with ReLU (and BatchNorm) between them; no hidden layer is a linear classifier.

    Args:
        in_dim: input features.
        hidden_dims: width of each hidden layer, possibly empty.
        out_dim: output features.
        batch_norm: BatchNorm1d after each hidden linear layer.
        dropout: dropout probability after each hidden layer's ReLU (0: none).
    """
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(width)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
