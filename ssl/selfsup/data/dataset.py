"""A torch Dataset over an image source: decode, transform, and the bad-image policy.

An image that cannot be decoded is either skipped (``on_bad_image="skip"``: a warning with its path,
and the collate function drops it and reports its name in the batch) or stops the run
(``on_bad_image="error"``). Batches are dicts: ``image`` (B, 3, H, W) uint8, ``label`` (B,) long (-1 when
unlabeled), ``index`` (B,) positions in the source, ``bad_images`` (list of names skipped while making
this batch), and with a keyed sampler (:class:`~selfsup.data.sampler.EpochSampler`) ``key`` (B,) int64,
each sample's random key (:mod:`selfsup.training.randomness`). With ``decode_here=False`` (decoding on the
device, :mod:`selfsup.data.device_decode`) a batch holds ``encoded``, the images' file bytes, instead
of ``image``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from selfsup.data.decode import decode
from selfsup.data.device_decode import EncodedImages
from selfsup.data.sources import ImageSource, Sample
from selfsup.data.transforms import KeyedAugmentation
from selfsup.errors import DataError, UnreadableImageError

BAD_IMAGE_POLICIES = ("skip", "error")


def require_policy(on_bad_image: str) -> None:
    """``on_bad_image`` is one of :data:`BAD_IMAGE_POLICIES`, else a DataError naming the choices."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DataError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")


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
        decode_here: decode and transform here; False hands out the file bytes for the device to decode
            (:class:`~selfsup.data.device_decode.DeviceDecoder` applies ``transform`` and the policy).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Tensor], Tensor] | None,
        on_bad_image: str = "skip",
        decode_here: bool = True,
    ) -> None:
        require_policy(on_bad_image)
        self.source = source
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.decode_here = decode_here

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any] | BadImage:
        """``item``: a position in the source, or ``(position, key)`` from a keyed sampler.

        A keyed transform (:class:`~selfsup.data.transforms.KeyedAugmentation`) draws from the key.
        """
        index, key = item if isinstance(item, tuple) else (item, None)
        return sample_item(
            self.source.get(index), index, key, self.transform, self.on_bad_image, self.decode_here
        )


def sample_item(
    sample: Sample,
    index: int,
    key: int | None,
    transform: Callable[[Tensor], Tensor] | None,
    on_bad_image: str,
    decode_here: bool = True,
) -> dict[str, Any] | BadImage:
    """One sample as a batch item: decoded and transformed, or (``decode_here=False``) its bytes.

    The one rule of every loader (:class:`ImageDataset`, the shard stream). A keyed transform
    (:class:`~selfsup.data.transforms.KeyedAugmentation`) draws from ``key``; an image that cannot be
    decoded is a :class:`BadImage` (``on_bad_image="skip"``) or raises (``"error"``).
    """
    if not decode_here:
        return {
            "encoded": sample.data,
            "name": sample.name,
            "label": sample.label,
            "index": index,
            "key": key,
        }
    try:
        image = decode(sample.data, sample.name)
    except UnreadableImageError:
        if on_bad_image == "error":
            raise
        return BadImage(sample.name)  # logged once per file by the DataModule
    if isinstance(transform, KeyedAugmentation):
        image = transform(image, key)
    elif transform is not None:
        image = transform(image)
    out = {"image": image, "label": sample.label, "index": index}
    if key is not None:
        out["key"] = key
    return out


def collate(items: list[dict[str, Any] | BadImage]) -> dict[str, Any]:
    """Stack good images; list the names of skipped ones under ``bad_images``.

    Undecoded items (``encoded`` bytes) become one :class:`~selfsup.data.device_decode.EncodedImages`.
    """
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item.name for item in items if isinstance(item, BadImage)]
    if good and "encoded" in good[0]:
        encoded = EncodedImages(
            [item.pop("encoded") for item in good],
            [item.pop("name") for item in good],
            [int(item["key"]) for item in good],
        )
        batch = default_collate(good)
        batch["encoded"] = encoded
    elif good:
        batch = default_collate(good)
    else:
        batch = {
            "image": torch.empty(0, 3, 0, 0, dtype=torch.uint8),
            "label": torch.empty(0, dtype=torch.long),
        }
    batch["bad_images"] = bad
    return batch
