"""Base augmentation on the CPU (uint8 in, uint8 out) and normalization on the device.

Workers only decode and crop; tensors cross to the device as uint8 (a quarter of float32's bytes) and
are normalized there in one batched operation.

The training augmentation draws its crop box and flip from the sample's key
(:mod:`selfsup.training.randomness`), so a sample gets the same augmentation in a given epoch whatever
the worker, rank or batch it lands in. The rule is torchvision's ``RandomResizedCrop`` (up to ten
tries of area fraction uniform in ``scale`` and log aspect ratio uniform in ``log(ratio)``, else the
centre crop) and ``RandomHorizontalFlip`` (probability 1/2); only the source of the random numbers
differs.

``crop="padded"`` is instead torchvision's ``RandomCrop(image_size, padding=crop_padding)`` (RotNet's
CIFAR-10 augmentation): zero-pad every side by ``crop_padding`` px and cut an ``image_size`` window at
an offset uniform over all positions (``2 * crop_padding + 1`` per axis for a 32 px image at 32 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.training.randomness import CROP, FLIP, LIBRARY_SEED, integers, random_keys, uniform

CROP_TRIES = 10  # torchvision's RandomResizedCrop: tries before falling back to the centre crop
CROPS = ("random_resized", "padded")


def crop_box(
    key: Tensor, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
    """torchvision's random resized crop box for an ``height`` x ``width`` image, drawn from ``key``.

    Args:
        key: () int64 sample key.
        height: image height in px.
        width: image width in px.
        scale: (min, max) area fraction of the box.
        ratio: (min, max) aspect ratio (width / height) of the box.

    Returns:
        (top, left, box height, box width) in px.
    """
    draws = uniform(key.view(1), CROP, 4 * CROP_TRIES).view(CROP_TRIES, 4).tolist()
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in draws:
        target_area = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_low + u_ratio * (log_high - log_low))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height  # the fallback: centre crop, clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def padded_crop_offset(key: Tensor, height: int, width: int, size: int, padding: int) -> tuple[int, int]:
    """torchvision's ``RandomCrop(size, padding)`` offset, drawn from ``key``.

    Args:
        key: () int64 sample key.
        height: image height in px, before padding.
        width: image width in px, before padding.
        size: side of the square window.
        padding: zero padding added to every side.

    Returns:
        (top, left) of the window in the padded image, uniform in ``[0, height + 2 * padding - size]``
        and ``[0, width + 2 * padding - size]``.
    """
    high_top, high_left = height + 2 * padding - size + 1, width + 2 * padding - size + 1
    if high_top < 1 or high_left < 1:
        raise ValueError(
            f"a {size} px padded crop needs images of at least {size - 2 * padding} px with "
            f"padding {padding}, got {height}x{width}"
        )
    top, left = integers(key.view(1), CROP, 2, torch.tensor([high_top, high_left])).view(2).tolist()
    return int(top), int(left)


class KeyedAugmentation:
    """Random (resized or padded) crop to ``image_size`` and an optional horizontal flip, on (3, H, W) uint8.

    Called with a sample key (what the training loader's sampler hands the dataset) the draw is a
    function of the key; called without one it draws a key from torch's global generator.

    Args:
        image_size: side of the square output.
        crop_scale: area range of the crop.
        crop_ratio: aspect-ratio range of the crop.
        hflip: flip horizontally with probability 1/2.
        crop: ``random_resized`` (``crop_scale``, ``crop_ratio``) or ``padded`` (``crop_padding``).
        crop_padding: zero padding of every side before a ``padded`` crop.
        rand_augment: ``(num_ops, magnitude)`` of torchvision's RandAugment after the crop and flip
            (fine-tuning; MAE's is timm's rand-m9-mstd0.5-inc1, close to (2, 9)), or None. It draws
            from torch's generator, seeded from the sample's key inside a forked generator state, so
            it too is a function of the key.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: Sequence[float] = (0.2, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        crop: str = "random_resized",
        crop_padding: int = 4,
        rand_augment: Sequence[int] | None = None,
    ) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {list(CROPS)}, got {crop!r}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.image_size, self.hflip = image_size, hflip
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.crop, self.crop_padding = crop, crop_padding
        self.rand_augment = None
        if rand_augment is not None:
            num_ops, magnitude = (int(v) for v in rand_augment)
            self.rand_augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, image: Tensor, key: Tensor | int | None = None) -> Tensor:
        """(3, H, W) uint8 -> (3, image_size, image_size) uint8."""
        key = random_keys(1)[0] if key is None else torch.as_tensor(key, dtype=torch.int64)
        if self.crop == "padded":
            image = self._padded_crop(image, key)
        else:
            top, left, h, w = crop_box(
                key, image.shape[-2], image.shape[-1], self.crop_scale, self.crop_ratio
            )
            size = [self.image_size, self.image_size]
            image = TF.resized_crop(image, top, left, h, w, size, antialias=True)
        if self.hflip and uniform(key.view(1), FLIP, 1).item() < 0.5:
            image = TF.horizontal_flip(image)
        if self.rand_augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(integers(key.view(1), LIBRARY_SEED, 1, 2**62).item()))
                image = self.rand_augment(image)
        return image

    def _padded_crop(self, image: Tensor, key: Tensor) -> Tensor:
        """(3, H, W) -> (3, image_size, image_size): the window at the key's offset of the zero-padded image."""
        size, pad = self.image_size, self.crop_padding
        top, left = padded_crop_offset(key, image.shape[-2], image.shape[-1], size, pad)
        padded = TF.pad(image, [pad, pad, pad, pad], fill=0) if pad else image
        return padded[..., top : top + size, left : left + size].contiguous()

    def __repr__(self) -> str:
        crop = (
            f"crop='padded', crop_padding={self.crop_padding}"
            if self.crop == "padded"
            else f"crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}"
        )
        extra = f", rand_augment={self.rand_augment}" if self.rand_augment is not None else ""
        return f"KeyedAugmentation(image_size={self.image_size}, {crop}, hflip={self.hflip}{extra})"


def eval_transform(image_size: int, crop_fraction: float = 1.0) -> v2.Transform:
    """Resize the short side to ``image_size / crop_fraction`` and take the centre ``image_size`` crop."""
    return v2.Compose(
        [v2.Resize(round(image_size / crop_fraction), antialias=True), v2.CenterCrop(image_size)]
    )


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, 3, H, W) uint8 -> float32 normalized by per-channel ``mean`` and ``std`` given in [0, 1] units."""
    scale = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    shift = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - shift) / scale
