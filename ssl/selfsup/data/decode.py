"""Decoding image bytes to (3, H, W) uint8 RGB, the one place that knows image formats.

16-bit images (PNGs with 16 bits per channel, grayscale or RGB) are valid: they are scaled to 8 bits.
Anything that cannot be decoded (an empty file, a truncated one, a file that is not an image) raises
:class:`~selfsup.errors.UnreadableImageError` naming the file, which the bad-image policy handles.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from selfsup.errors import UnreadableImageError


def decode(sample_data: Tensor, name: str) -> Tensor:
    """Encoded bytes (1-D uint8) or a decoded image -> (3, H, W) uint8 RGB."""
    if sample_data.ndim == 3:
        return sample_data
    if sample_data.numel() == 0:
        raise UnreadableImageError(name, "empty file (0 bytes)")
    try:
        image = decode_image(sample_data, mode=ImageReadMode.RGB)
    except Exception as e:  # torchvision raises RuntimeError, ValueError or worse for broken files
        image = _decode_with_pil(sample_data)  # formats torchvision does not read, e.g. BMP
        if image is None:
            raise UnreadableImageError(name, _reason(e)) from e
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16: scale to 0..255
        image = to_dtype(image, torch.uint8, scale=True)
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
        raise UnreadableImageError(name, f"decoded to shape {tuple(image.shape)}, not (3, H, W)")
    return image


def _decode_with_pil(sample_data: Tensor) -> Tensor | None:
    """PIL's decoding of what torchvision cannot read, as (3, H, W) uint8; None when PIL cannot either."""
    try:
        with Image.open(io.BytesIO(sample_data.numpy().tobytes())) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except Exception:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
        return None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _reason(error: BaseException) -> str:
    """The first line of a decoder's message, without torchvision's C++ source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    _, _, tail = text.partition(".cpp:")
    if tail:  # "decode_jpeg, /__w/.../decode_jpeg.cpp:171, Image is incomplete" -> "Image is incomplete"
        text = tail.partition(", ")[2] or text
    if text.startswith("Unsupported image file"):
        return "not an image file (or a format neither torchvision nor PIL reads)"
    return text
