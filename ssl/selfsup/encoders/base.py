"""The one interface every encoder implements, so tasks and evaluation never ask which kind it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """A headless image encoder.

    Subclasses set ``out_dim`` and ``stage_names`` and implement ``stage_modules`` and
    ``forward_features``; ``forward`` returns pooled features.

    Attributes:
        out_dim: size of the pooled feature vector returned by ``forward``.
        stage_names: names of the intermediate features, in forward order (``stem``, ``stage1``..
            for a ResNet; ``patch_embed``, ``block1``.. for a ViT). ``forward_features`` accepts them,
            and freezing "the first k stages" counts in this order.
        config: the constructor's arguments with a ``_target_``, enough to rebuild the encoder
            (``hydra.utils.instantiate(encoder.config)``); written next to exported weights.
    """

    out_dim: int
    stage_names: tuple[str, ...]
    config: dict[str, Any]

    def forward(self, images: Tensor) -> Tensor:
        """Pooled features.

        Args:
            images: (B, 3, H, W) normalized float images.

        Returns:
            (B, out_dim) features.
        """
        raise NotImplementedError

    def forward_features(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Named intermediate features; the forward pass stops after the deepest one requested.

        Args:
            images: (B, 3, H, W) normalized float images.
            layers: names from ``stage_names`` (and ``pooled`` for the ``forward`` output).

        Returns:
            name -> feature map: (B, C, h, w) for convolutional stages, (B, T, D) for token stages.
        """
        raise NotImplementedError

    def stage_modules(self) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        """The modules and loose parameters of each stage, in ``stage_names`` order (for freezing)."""
        raise NotImplementedError

    def check_image_size(self, image_size: int) -> None:
        """Raise ``ValueError`` saying why when this encoder cannot take square images of this size."""

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise ``ValueError`` listing the allowed names when a requested feature does not exist."""
        allowed = (*self.stage_names, "pooled")
        unknown = [name for name in layers if name not in allowed]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; this encoder has {list(allowed)}")


def target_of(obj: object) -> str:
    """The import path that hydra's ``_target_`` needs to rebuild an object of this class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@torch.no_grad()
def feature_shapes(encoder: Encoder, image_size: int, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of each named feature for one image of ``image_size`` (without the batch dimension)."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        return {name: tuple(t.shape[1:]) for name, t in encoder.forward_features(probe, layers).items()}
    finally:
        encoder.train(was_training)
