"""The base augmentation on a whole batch at once, where the batch lives (a GPU, or the CPU).

:class:`~selfsup.data.transforms.KeyedAugmentation` crops one image at a time in CPU workers; that
cannot keep a GPU busy on small images. :class:`BatchAugmentation` applies the same rule to a
(B, 3, H, W) batch with no per-sample Python loop: the boxes of all samples are drawn in one
vectorized call from their keys (the same boxes, bit for bit, as the per-image path draws:
:func:`crop_boxes`), the random resized crop is one ``torchvision.ops.roi_align`` over all boxes,
the padded crop one gather, the flip one ``torch.where``.

Resampling differs from the per-image path only at the edges of a box and when a box is shrunk: the
per-image path resizes the cropped pixels (torchvision ``resized_crop``, replicating the crop's own
border, antialiased), ``roi_align`` samples the whole image at the same positions (reading real
neighbours across the box edge) and averages ``ceil(image side / size)`` samples per output pixel when
shrinking. Inside the box and when enlarging (the embedded data's 32 px images cropped to 64 px),
the two agree to uint8 rounding (tests/data/test_device_augment.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

from selfsup.data.transforms import CROP_TRIES, KeyedAugmentation
from selfsup.training.randomness import CROP, FLIP, integers, uniform


def crop_boxes(
    keys: Tensor, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> Tensor:
    """:func:`~selfsup.data.transforms.crop_box` for every key at once.

    Args:
        keys: (B,) int64 sample keys.
        height: image height in px (the same for the whole batch).
        width: image width in px.
        scale: (min, max) area fraction of a box.
        ratio: (min, max) aspect ratio (width / height) of a box.

    Returns:
        (B, 4) int64 boxes as (top, left, box height, box width), on the keys' device.
    """
    # float64 as the per-image path's Python floats, so that round() and int() agree exactly.
    draws = uniform(keys, CROP, 4 * CROP_TRIES).double().view(-1, CROP_TRIES, 4)
    u_area, u_ratio, u_top, u_left = draws.unbind(-1)  # each (B, tries)
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * (scale[0] + u_area * (scale[1] - scale[0]))
    aspect = torch.exp(log_low + u_ratio * (log_high - log_low))
    w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    h, w = pick(h), pick(w)
    top = torch.floor(pick(u_top) * (height - h + 1))
    left = torch.floor(pick(u_left) * (width - w + 1))
    fallback = _centre_box(height, width, ratio)
    none_fits = ~fits.any(dim=1)
    boxes = torch.stack([top, left, h, w], dim=1).long()
    boxes[none_fits] = torch.tensor(fallback, device=keys.device)
    return boxes


def _centre_box(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """The per-image path's fallback: the centre crop, clamped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Each image's box resampled to ``size`` x ``size`` (bilinear), all in one ``roi_align``.

    Args:
        images: (B, 3, H, W), any dtype (uint8 is converted to float).
        boxes: (B, 4) as (top, left, box height, box width) in px.
        size: output side.

    Returns:
        (B, 3, size, size) float32, in the input's value range.
    """
    top, left, h, w = boxes.to(torch.float32).unbind(1)
    index = torch.arange(len(boxes), device=images.device, dtype=torch.float32)
    rois = torch.stack([index, left, top, left + w, top + h], dim=1)  # (B, 5): batch, x1, y1, x2, y2
    # One sample per output pixel when enlarging (bilinear at the pixel centre, as resize does);
    # ceil(image side / size) per axis when boxes may shrink, averaged: an area filter against
    # aliasing. From the image size, not the boxes: no device-to-host sync.
    samples = max(1, math.ceil(max(images.shape[-2:]) / size))
    return roi_align(
        images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=samples, aligned=True
    )


def padded_crops(images: Tensor, offsets: Tensor, size: int, padding: int) -> Tensor:
    """Each image zero-padded by ``padding`` and cut at its (top, left) offset, in one gather.

    Args:
        images: (B, C, H, W).
        offsets: (B, 2) int64 (top, left) in the padded image.
        size: side of the window.
        padding: zero padding of every side.

    Returns:
        (B, C, size, size), the input's dtype.
    """
    padded = torch.nn.functional.pad(images, [padding] * 4) if padding else images
    steps = torch.arange(size, device=images.device)
    rows = (offsets[:, 0:1] + steps).view(-1, 1, size, 1)  # (B, 1, size, 1)
    cols = (offsets[:, 1:2] + steps).view(-1, 1, 1, size)  # (B, 1, 1, size)
    batch = torch.arange(len(images), device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


class BatchAugmentation(KeyedAugmentation):
    """:class:`~selfsup.data.transforms.KeyedAugmentation` on a (B, 3, H, W) batch, drawn from its keys.

    The same settings and constructor; only the call takes a whole batch and its keys.
    """

    def __call__(self, images: Tensor, keys: Tensor | int | None = None) -> Tensor:
        """(B, 3, H, W) uint8 (or float) and (B,) int64 keys -> (B, 3, image_size, image_size), same dtype."""
        assert isinstance(keys, Tensor), "a batch needs its (B,) sample keys"
        if self.crop == "padded":
            out = padded_crops(
                images, self.offsets(keys, *images.shape[-2:]), self.image_size, self.crop_padding
            )
        else:
            boxes = crop_boxes(keys, images.shape[-2], images.shape[-1], self.crop_scale, self.crop_ratio)
            out = resized_crops(images, boxes, self.image_size)
            if images.dtype == torch.uint8:  # as the per-image path: uint8 in, uint8 out
                out = out.round_().clamp_(0, 255).to(torch.uint8)
        if self.hflip:
            flip = (uniform(keys, FLIP, 1) < 0.5).view(-1, 1, 1, 1)
            out = torch.where(flip, out.flip(-1), out)
        return out

    def offsets(self, keys: Tensor, height: int, width: int) -> Tensor:
        """(B, 2) padded-crop offsets, as :func:`~selfsup.data.transforms.padded_crop_offset` draws them."""
        size, pad = self.image_size, self.crop_padding
        high = torch.tensor([height + 2 * pad - size + 1, width + 2 * pad - size + 1], device=keys.device)
        if (high < 1).any():
            raise ValueError(f"a {size} px padded crop needs images of at least {size - 2 * pad} px")
        return integers(keys, CROP, 2, high)
