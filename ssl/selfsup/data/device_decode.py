"""Decoding on the device: CPU workers only read file bytes; JPEGs are decoded where the batch trains.

For folders too large to keep decoded (``data.on_device`` is for data that fits), decoding is the
CPU's heaviest work: an ImageNet JPEG takes milliseconds per core, which 16 cores cannot do at the
rate one GPU trains. With ``data.decode_on_device=true`` the workers hand over each image's bytes
(:class:`EncodedImages`, which Lightning leaves on the host: ``decode_jpeg`` reads host bytes and
writes decoded pixels on the device), and :class:`DeviceDecoder` decodes the batch's JPEGs in one
``torchvision.io.decode_jpeg(..., device=...)`` call (nvJPEG on a GPU; libjpeg on the CPU, where the
tests run it). torchvision's decoder, not NVIDIA DALI: it is already a dependency, it decodes the
same JPEGs the CPU path does (DALI would be a second pipeline with its own augmentation), and
the data path benchmark measures it (benchmarks/README.md).

Each decoded image then gets the same keyed crop and flip as in the workers
(:class:`~selfsup.data.transforms.KeyedAugmentation`, its box drawn on the host from the key), on
the device. The loop over images is deliberate: the decoded images have different sizes, so they
cannot be one tensor until they are cropped (a zero-padded canvas would blend its padding into the
edge pixels of smaller images); each costs a resize and a flip kernel.

Files that are not JPEGs (PNG, WebP, ...) and JPEGs the device decoder refuses (CMYK, progressive on
some nvJPEG versions) are decoded on the CPU as in the workers (:func:`~selfsup.data.decode.decode`);
a file neither can decode follows ``data.on_bad_image`` (skipped and named, or the run stops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from selfsup.data.decode import decode
from selfsup.data.transforms import KeyedAugmentation
from selfsup.errors import UnreadableImageError

JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


@dataclass
class EncodedImages:
    """A batch's images as their file bytes, kept on the host by :meth:`to`.

    Attributes:
        data: per image, its bytes (1-D uint8) or, for sources that hold decoded pixels, (3, H, W) uint8.
        names: where each image comes from, for the bad-image messages.
        keys: each image's sample key (host ints), from which its crop and flip are drawn.
    """

    data: list[Tensor]
    names: list[str]
    keys: list[int]

    def __len__(self) -> int:
        return len(self.data)

    def to(self, *args: Any, **kwargs: Any) -> EncodedImages:
        """Stays on the host: Lightning's batch transfer calls ``.to`` on what has one (and would
        otherwise move the byte tensors inside this dataclass), but ``decode_jpeg`` reads host bytes."""
        return self


def is_jpeg(data: Tensor) -> bool:
    """Whether 1-D bytes start with the JPEG start-of-image marker."""
    return data.ndim == 1 and data.numel() >= 3 and tuple(data[:3].tolist()) == JPEG_MAGIC


class DeviceDecoder:
    """Decode a batch of :class:`EncodedImages` on a device and crop and flip each image there.

    Args:
        augmentation: the keyed crop and flip (the datamodule's ``train_augmentation()``).
        on_bad_image: ``skip`` or ``error`` (:mod:`selfsup.data.dataset`).
    """

    def __init__(self, augmentation: KeyedAugmentation, on_bad_image: str) -> None:
        self.augmentation = augmentation
        self.on_bad_image = on_bad_image

    def __call__(self, encoded: EncodedImages, device: torch.device) -> tuple[Tensor, list[int], list[str]]:
        """Returns the (B', 3, S, S) uint8 crops on ``device``, the positions in the batch of the
        B' images kept, and the names of those skipped as unreadable."""
        decoded = self.decode(encoded, device)
        kept = [i for i, image in enumerate(decoded) if image is not None]
        bad = [encoded.names[i] for i, image in enumerate(decoded) if image is None]
        crops = [
            self.augmentation(image, torch.tensor(key))
            for image, key in zip(decoded, encoded.keys, strict=True)
            if image is not None
        ]
        size = self.augmentation.image_size
        images = (
            torch.stack(crops) if crops else torch.empty(0, 3, size, size, dtype=torch.uint8, device=device)
        )
        return images, kept, bad

    def decode(self, encoded: EncodedImages, device: torch.device) -> list[Tensor | None]:
        """Each image as (3, H, W) uint8 on ``device``, or None when it cannot be decoded and is skipped.

        Raises:
            UnreadableImageError: an image cannot be decoded and ``on_bad_image`` is ``error``.
        """
        out: list[Tensor | None] = [None] * len(encoded)
        jpegs = [i for i, data in enumerate(encoded.data) if is_jpeg(data)]
        for i, image in zip(jpegs, self._decode_jpegs([encoded.data[i] for i in jpegs], device), strict=True):
            out[i] = image
        for i, image in enumerate(out):
            if image is None:  # not a JPEG, or one the device decoder refused: as the workers decode it
                out[i] = self._decode_on_host(encoded.data[i], encoded.names[i], device)
        return out

    @staticmethod
    def _decode_jpegs(data: Sequence[Tensor], device: torch.device) -> list[Tensor | None]:
        """One batched decode; if any image breaks it, each on its own (None for those that fail)."""
        if not data:
            return []
        try:
            return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the whole batch: find it (rare, so one by one)
            pass
        decoded: list[Tensor | None] = []
        for item in data:
            try:
                decoded.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded

    def _decode_on_host(self, data: Tensor, name: str, device: torch.device) -> Tensor | None:
        try:
            return decode(data, name).to(device, non_blocking=True)
        except UnreadableImageError:
            if self.on_bad_image == "error":
                raise
            return None
