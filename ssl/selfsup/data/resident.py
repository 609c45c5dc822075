"""Datasets that fit in memory, decoded once and kept where the model is (``data.on_device=true``).

For CIFAR-sized images the per-image work of CPU workers (decode, crop, collate) costs more than the
accelerator's step. Here the pretraining images are decoded once into one (N, 3, S, S) uint8 tensor,
cached on disk beside the feature cache (keyed by the source's fingerprint and S), moved to the
device once, and each batch is gathered by index on the device and augmented there in one batched
call (:class:`~selfsup.data.device_augment.BatchAugmentation`).

The loader still runs: it yields only ``(index, key)`` pairs from the same
:class:`~selfsup.data.sampler.EpochSampler` as the decoding path, so the order per epoch, DDP
sharding, ``drop_last``, mid-epoch resume and every sample's random key are the same.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from selfsup import progress
from selfsup.atomic import atomic_write
from selfsup.data.decode import decode
from selfsup.data.sources import ImageSource
from selfsup.errors import ConfigError, DataError, UnreadableImageError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class ResidentImages:
    """A source's images as one uint8 tensor, and the device copies made of it.

    Args:
        images: (N, 3, S, S) uint8, in the source's order with unreadable images left out.
        bad: names of the images that could not be decoded.
    """

    def __init__(self, images: Tensor, bad: list[str]) -> None:
        self.images, self.bad = images, bad
        self._on: dict[torch.device, Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def on(self, device: torch.device) -> Tensor:
        """The images on ``device`` (copied there once)."""
        if device not in self._on:
            self._on[device] = self.images.to(device, non_blocking=True)
        return self._on[device]

    def gather(self, indices: Tensor) -> Tensor:
        """(B,) indices (on the target device) -> (B, 3, S, S) uint8 there."""
        return self.on(indices.device)[indices]


def load_resident(
    source: ImageSource, size: int | None, cache_dir: str | Path | None, max_gib: float, on_bad_image: str
) -> ResidentImages:
    """Decode every image of ``source`` to ``size`` px (None: their own size), or read the cached copy.

    Images of another size than ``size`` are resized (short side) and centre-cropped to it; with
    ``size=None`` they must all have the same size.

    Raises:
        ConfigError: the images would take more than ``max_gib`` (``data.on_device_max_gib``), or have
            different sizes and ``data.on_device_size`` is null.
    """
    first = decode(source.get(0).data, source.name(0))
    side = int(size) if size is not None else int(first.shape[-1])
    need = len(source) * 3 * side * side / 2**30
    if need > max_gib:
        raise ConfigError(
            "data.on_device",
            f"{len(source)} images of {side} px take {need:.1f} GiB, more than data.on_device_max_gib="
            f"{max_gib}; raise it, lower data.on_device_size, or keep data.on_device=false",
        )
    path = _cache_path(source, side, cache_dir)
    if path is not None and path.is_file():
        with np.load(path) as stored:
            log.info("on-device data: %d images of %d px read from %s", len(stored["images"]), side, path)
            return ResidentImages(torch.from_numpy(stored["images"]), [str(n) for n in stored["bad"]])
    images, bad = _decode_all(source, side, size is None, on_bad_image)
    if path is not None:
        atomic_write(
            path,
            lambda tmp: np.savez(tmp, images=images.numpy(), bad=np.array(bad, dtype=str)),
            suffix=".npz",
        )
    log.info(
        "on-device data: %d images of %d px decoded (%.2f GiB)", len(images), side, images.numel() / 2**30
    )
    return ResidentImages(images, bad)


def _decode_all(
    source: ImageSource, side: int, same_size: bool, on_bad_image: str
) -> tuple[Tensor, list[str]]:
    out = torch.empty(len(source), 3, side, side, dtype=torch.uint8)
    bad: list[str] = []
    kept = 0
    with progress.task("on-device data: decoding", len(source), "images") as advance:
        for i in range(len(source)):
            sample = source.get(i)
            advance()
            try:
                image = decode(sample.data, sample.name)
            except UnreadableImageError:
                if on_bad_image == "error":
                    raise
                bad.append(sample.name)
                log.warning("unreadable image skipped: %s (%d so far)", sample.name, len(bad))
                continue
            if tuple(image.shape[-2:]) != (side, side):
                if same_size:
                    raise ConfigError(
                        "data.on_device_size",
                        f"{sample.name} is {image.shape[-1]}x{image.shape[-2]} px, not {side}x{side} like "
                        "the first image: set data.on_device_size to store every image at one size",
                    )
                image = TF.center_crop(TF.resize(image, side, antialias=True), [side, side])
            out[kept] = image
            kept += 1
    if kept == 0:
        raise DataError("no readable image in the pretraining data")
    return out[:kept].clone() if kept < len(source) else out, bad


def _cache_path(source: ImageSource, side: int, cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256(f"{CACHE_VERSION}:{source.fingerprint()}:{side}".encode()).hexdigest()[:32]
    return Path(cache_dir).expanduser() / f"{key}.npz"


class KeyedIndices(Dataset):
    """What the loader hands out on the on-device path: only the sampler's ``(index, key)``."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, key = item
        return {"index": index, "key": key}
