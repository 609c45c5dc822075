"""Masks and patches for masked-image pretraining, drawn per sample on the device in batched operations.

- :func:`random_masking` is MAE's (He et al., "Masked Autoencoders Are Scalable Vision Learners",
  CVPR 2022, ``models_mae.py``): each sample sorts its own uniform noise, keeps the tokens with the
  smallest ``round(L * (1 - mask_ratio))`` values, and remembers how to put everything back in order.
- :func:`block_mask` is SimMIM's (Xie et al., "SimMIM: a Simple Framework for Masked Image Modeling",
  CVPR 2022, ``MaskGenerator``): the image is cut into mask patches of several tokens (32 px at 224 px)
  and ``ceil(M * mask_ratio)`` of the M mask patches are masked, each a whole block of tokens.
- :func:`patchify` and :func:`unpatchify` convert images to MAE's per-patch pixel vectors and back.

No function loops over samples in Python: one draw and one ``argsort`` serve the whole batch. The
random order of each sample is drawn from its key (:mod:`selfsup.training.randomness`): the argsort of
L independent uniform 64-bit words, a uniformly random permutation as MAE's argsort of uniform noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup.training.randomness import MASK, bits, random_keys


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """How many of ``num_tokens`` stay visible: ``round(num_tokens * (1 - mask_ratio))``.

    Raises:
        ValueError: when that leaves no visible token or no masked one (nothing to encode, or nothing
            to predict).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {mask_ratio}")
    keep = round(num_tokens * (1.0 - mask_ratio))
    if not 0 < keep < num_tokens:
        raise ValueError(
            f"mask_ratio {mask_ratio} of {num_tokens} tokens keeps {keep} visible: at least one token "
            "must stay visible and at least one be masked (use smaller patches or another ratio)"
        )
    return keep


def random_masking(
    tokens: Tensor,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    keys: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking by argsort of uniform noise.

    Args:
        tokens: (B, L, D) tokens in their natural order.
        mask_ratio: fraction of the L tokens to mask; ``num_visible(L, mask_ratio)`` stay visible.
        generator: random source of the keys when ``keys`` is None (on the tokens' device); None
            uses the global one.
        noise: (B, L) values that decide the order instead of fresh noise (the smallest are kept).
        keys: (B,) int64 sample keys the noise is drawn from.

    Returns:
        visible: (B, K, D) the kept tokens, in the random order (K = ``num_visible(L, mask_ratio)``).
        mask: (B, L) float, 1 where a token is masked and 0 where it is visible, in natural order.
        ids_restore: (B, L) long; ``torch.gather`` of the (B, L, D) sequence ``[visible, fillers]`` with
            it along dim 1 puts every token back at its natural position (see :func:`unshuffle`).

    Example:
        >>> visible, mask, ids_restore = random_masking(torch.randn(2, 64, 8), 0.75)
        >>> visible.shape, mask.sum(dim=1)
        (torch.Size([2, 16, 8]), tensor([48., 48.]))
    """
    batch, length, dim = tokens.shape
    keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = _noise(keys, batch, length, tokens.device, generator)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # ascending: the first `keep` are visible
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore


def _noise(
    keys: Tensor | None,
    batch: int,
    length: int,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """(B, L) int64 random words from the samples' keys (drawn from ``generator`` when None)."""
    if keys is None:
        keys = random_keys(batch, device, generator)
    return bits(keys, MASK, length)


def unshuffle(shuffled: Tensor, ids_restore: Tensor) -> Tensor:
    """Undo :func:`random_masking`'s order.

    Args:
        shuffled: (B, L, D) the visible tokens followed by one filler (e.g. a mask token) per masked one.
        ids_restore: (B, L) from :func:`random_masking`.

    Returns:
        (B, L, D) with token ``j`` of each sample at position ``j`` again.
    """
    return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, shuffled.shape[-1]))


def block_mask(
    batch: int,
    size: int,
    block: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    keys: Tensor | None = None,
) -> Tensor:
    """SimMIM's block-wise random mask on a square grid of units (tokens or pixels).

    Args:
        batch: masks to draw, one per sample.
        size: units per side of the grid, a multiple of ``block``.
        block: units per side of one mask patch.
        mask_ratio: fraction of the mask patches to mask; ``ceil(M * mask_ratio)`` of the
            M = (size / block)^2 mask patches are masked in every sample (SimMIM rounds up).
        device: where the mask is made.
        generator: random source of the keys when ``keys`` is None (on ``device``); None uses the
            global one.
        keys: (B,) int64 sample keys the masks are drawn from.

    Returns:
        (B, size, size) bool, True where masked; constant over each ``block`` x ``block`` square.
    """
    if size % block:
        raise ValueError(f"the mask patch ({block} units) must divide the grid ({size} units)")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {mask_ratio}")
    side = size // block
    count = math.ceil(side * side * mask_ratio)
    noise = _noise(keys, batch, side * side, device, generator)
    rank = torch.argsort(
        torch.argsort(noise, dim=1, stable=True), dim=1
    )  # each patch's place in its sample's order
    coarse = (rank < count).view(batch, side, side)
    return coarse.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Images to per-patch pixel vectors, in MAE's layout.

    Args:
        images: (B, C, H, W), H and W multiples of ``patch_size``.
        patch_size: side of a square patch.

    Returns:
        (B, L, patch_size * patch_size * C), patches in row-major order (the ViT's token order), each
        patch's pixels row-major with the channels last.
    """
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for square images: (B, L, p * p * C) -> (B, C, sqrt(L) p, sqrt(L) p)."""
    batch, length, _ = patches.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"unpatchify needs a square grid of patches, got {length}")
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(batch, channels, side * patch_size, side * patch_size)
