"""Decoding image bytes to (3, H, W) uint8 RGB, the one place that knows image formats."""

from __future__ import annotations

from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from selfsup.errors import UnreadableImageError


def decode(sample_data: Tensor, name: str) -> Tensor:
    """Encoded bytes (1-D uint8) or a decoded image -> (3, H, W) uint8 RGB."""
    if sample_data.ndim == 3:
        return sample_data
    try:
        return decode_image(sample_data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise UnreadableImageError(name, str(e).splitlines()[0] if str(e) else type(e).__name__) from e
