"""A torch Dataset over an image source: decode, transform, and the bad-image policy.

An image that cannot be decoded is either skipped (``on_bad_image="skip"``: a warning with its path,
and the collate function drops it and reports its name in the batch) or stops the run
(``on_bad_image="error"``). Batches are dicts: ``image`` (B, 3, H, W) uint8, ``label`` (B,) long (-1 when
unlabeled), ``index`` (B,) positions in the source, ``bad_images`` (list of names skipped while making
this batch), and with a keyed sampler (:class:`~selfsup.data.sampler.EpochSampler`) ``key`` (B,) int64,
each sample's random key (:mod:`selfsup.training.randomness`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from selfsup.data.decode import decode
from selfsup.data.sources import ImageSource
from selfsup.data.transforms import KeyedAugmentation
from selfsup.errors import DataError, UnreadableImageError

BAD_IMAGE_POLICIES = ("skip", "error")


class BadImage:
    """Stands in for an image that could not be decoded; the collate function drops it."""

    def __init__(self, name: str) -> None:
        self.name = name


class ImageDataset(Dataset):
    """Decoded, transformed images of a source.

    Args:
        source: where the images come from.
        transform: applied to each (3, H, W) uint8 image; must return uint8 of a fixed size.
        on_bad_image: ``skip`` or ``error``.
    """

    def __init__(
        self, source: ImageSource, transform: Callable[[Tensor], Tensor] | None, on_bad_image: str = "skip"
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise DataError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.source = source
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any] | BadImage:
        """``item``: a position in the source, or ``(position, key)`` from a keyed sampler.

        A keyed transform (:class:`~selfsup.data.transforms.KeyedAugmentation`) draws from the key.
        """
        index, key = item if isinstance(item, tuple) else (item, None)
        sample = self.source.get(index)
        try:
            image = decode(sample.data, sample.name)
        except UnreadableImageError:
            if self.on_bad_image == "error":
                raise
            return BadImage(sample.name)  # logged once per file by the DataModule
        if isinstance(self.transform, KeyedAugmentation):
            image = self.transform(image, key)
        elif self.transform is not None:
            image = self.transform(image)
        out = {"image": image, "label": sample.label, "index": index}
        if key is not None:
            out["key"] = key
        return out


def collate(items: list[dict[str, Any] | BadImage]) -> dict[str, Any]:
    """Stack good images; list the names of skipped ones under ``bad_images``."""
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item.name for item in items if isinstance(item, BadImage)]
    if good:
        batch = default_collate(good)
    else:
        batch = {
            "image": torch.empty(0, 3, 0, 0, dtype=torch.uint8),
            "label": torch.empty(0, dtype=torch.long),
        }
    batch["bad_images"] = bad
    return batch
