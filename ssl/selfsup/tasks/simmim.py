"""SimMIM: masked image modeling with a linear head (Xie, Zhang, Cao, Lin, Bao, Yao, Dai & Hu, "SimMIM:
a Simple Framework for Masked Image Modeling", CVPR 2022), for ViTs and convolutional encoders.

Protocol details that matter (paper Sec. 3-4; microsoft/SimMIM ``data_simmim.py``, ``simmim.py``):

- block-wise random masking: the image is cut into mask patches of 32 px at 224 px (scaled here to
  the image size: ``mask_patch_size * image_size / mask_patch_reference_size``, moved to the nearest
  size that the encoder's token grid allows and that divides the image; computed once and logged),
  and ``ceil(M * mask_ratio)`` of the M mask patches are masked, ratio 0.6 (:func:`block_mask`);
- a ViT sees a learned mask token in place of each masked patch embedding (before the position
  embedding is added); a convolutional encoder (a ResNet) sees the image with every masked pixel
  replaced by a learned per-channel fill, so no masked pixel ever reaches it;
- a linear prediction head: a 1x1 convolution from the last feature map (the ViT's patch tokens as a
  map) to ``stride^2 x 3`` channels, then a pixel shuffle back to full resolution;
- loss: L1 between predicted and true normalized pixels, over the masked pixels only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from pytorch_lightning import Callback
from torch import Tensor, nn

from selfsup.encoders.base import Encoder, feature_shapes
from selfsup.encoders.vit import ViTEncoder
from selfsup.reports.reconstructions import ReconstructionGrids
from selfsup.tasks.base import PretextTask, StepOutput
from selfsup.tasks.masking import block_mask
from selfsup.training.optim import OptimSettings

log = logging.getLogger(__name__)


def scaled_mask_patch(
    image_size: int, unit: int, mask_patch_size: int = 32, reference_size: int = 224
) -> int:
    """The mask patch side in pixels for images of ``image_size`` px.

    SimMIM's 32 px at 224 px is scaled to ``mask_patch_size * image_size / reference_size`` and moved to
    the nearest multiple of ``unit`` (the encoder's token size; 1 px for a ResNet) that divides
    ``image_size`` into at least 2 x 2 mask patches (the smaller on a tie).

    Example:
        >>> scaled_mask_patch(224, 16), scaled_mask_patch(32, 4), scaled_mask_patch(64, 1)
        (32, 4, 8)
    """
    if image_size % unit:
        raise ValueError(f"image size {image_size} px is not a multiple of the token size {unit} px")
    target = mask_patch_size * image_size / reference_size
    sizes = [b for b in range(unit, image_size // 2 + 1, unit) if image_size % b == 0]
    if not sizes:
        raise ValueError(
            f"{image_size} px images of {unit} px tokens cannot be cut into 2 x 2 or more mask patches"
        )
    return min(sizes, key=lambda b: (abs(b - target), b))


class LearnedFill(nn.Module):
    """A learned value that replaces masked entries: SimMIM's mask token, or a pixel fill.

    Args:
        shape: shape of the value, broadcast against the input ((D,) for tokens, (3, 1, 1) for pixels).
    """

    def __init__(self, shape: Sequence[int], std: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(*shape))
        if std:
            nn.init.trunc_normal_(self.value, std=std)

    def no_weight_decay(self) -> set[str]:
        """The learned value is not weight-decayed (SimMIM exempts its mask token; :mod:`selfsup.training.optim`)."""
        return {"value"}

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` with the learned value wherever ``mask`` (bool, broadcastable to ``x``) is True."""
        return torch.where(mask, self.value.to(x.dtype), x)


class SimMIM(PretextTask):
    """Masked image modeling with a linear head, for a ViT or any encoder with a last feature map.

    Args:
        encoder: a ViT (masked with a mask token) or a convolutional encoder (masked at the input).
        image_size: side of the training images (the mask patch and the head are sized for it).
        mask_ratio: fraction of the mask patches masked in each image.
        mask_patch_size: mask patch side at ``mask_patch_reference_size`` px (SimMIM: 32 at 224).
        mask_patch_reference_size: image size at which ``mask_patch_size`` is given; the mask patch
            scales with the image (set it equal to the image size for an absolute mask patch size).
        reconstructions: ``every_n_epochs`` and ``num_images`` of the reconstruction grids saved in
            the run directory (:class:`~selfsup.reports.reconstructions.ReconstructionGrids`); None: none.
            Required (conf/task/simmim.yaml sets it).
        optim: see :class:`~selfsup.tasks.base.PretextTask`.
        schedule: see :class:`~selfsup.tasks.base.PretextTask`.

    Example:
        >>> task = SimMIM(ResNetEncoder(depth=18, cifar_stem=True), image_size=32, reconstructions=None)
        >>> task.pretext_step(torch.randn(8, 3, 32, 32)).loss
    """

    def __init__(
        self,
        encoder: Encoder,
        image_size: int,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 32,
        mask_patch_reference_size: int = 224,
        *,
        reconstructions: Mapping[str, int] | None,
        optim: OptimSettings | None = None,
        schedule: Callable | None = None,
    ) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {mask_ratio}")
        encoder.check_image_size(image_size)
        super().__init__(encoder, optim, schedule)
        self.image_size, self.mask_ratio = image_size, mask_ratio
        self.reconstructions = dict(reconstructions) if reconstructions is not None else None
        self.masks_tokens = isinstance(encoder, ViTEncoder)
        if isinstance(encoder, ViTEncoder):
            self.unit = self.stride = encoder.patch_size
            channels = encoder.out_dim
            # SimMIM's mask token: trunc-normal(0.02); not weight-decayed (as in SimMIM).
            self.fill = LearnedFill((encoder.out_dim,), std=0.02)
        else:
            self.unit = 1
            channels, self.stride = self._last_map(encoder, image_size)
            self.fill = LearnedFill((3, 1, 1))  # starts at 0: the data's mean colour after normalization
        self.mask_patch = scaled_mask_patch(image_size, self.unit, mask_patch_size, mask_patch_reference_size)
        self.head = nn.Sequential(
            nn.Conv2d(channels, self.stride**2 * 3, kernel_size=1), nn.PixelShuffle(self.stride)
        )
        log.info(
            "SimMIM: mask patch %d px (%d px at %d px scaled to %d px, on %d px tokens), "
            "%d of %d mask patches masked per image, prediction stride %d",
            self.mask_patch, mask_patch_size, mask_patch_reference_size, image_size, self.unit,
            math.ceil((image_size // self.mask_patch) ** 2 * mask_ratio), (image_size // self.mask_patch) ** 2,
            self.stride,
        )  # fmt: skip

    @staticmethod
    def _last_map(encoder: Encoder, image_size: int) -> tuple[int, int]:
        """Channels and stride of the encoder's last feature map at ``image_size`` px."""
        last = encoder.stage_names[-1]
        shape = feature_shapes(encoder, image_size, [last])[last]
        if len(shape) != 3 or image_size % shape[-1] or shape[-1] != shape[-2]:
            raise ValueError(
                f"SimMIM needs a ViT or an encoder whose last stage ('{last}') is a square feature map "
                f"that divides the image; got shape {shape} at {image_size} px"
            )
        return shape[0], image_size // shape[-1]

    @property
    def vit(self) -> ViTEncoder:
        return cast(ViTEncoder, self.encoder)

    def check_input(self, image_size: int) -> None:
        self.encoder.check_image_size(image_size)
        if image_size != self.image_size:
            raise ValueError(
                f"SimMIM was built for {self.image_size} px images (task.image_size), got {image_size} px"
            )

    def configure_callbacks(self) -> list[Callback]:
        return [ReconstructionGrids(**self.reconstructions)] if self.reconstructions is not None else []

    # -- the model -----------------------------------------------------------------------------
    def draw_mask(
        self,
        batch: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """(B, S / unit, S / unit) bool block mask on the encoder's units (tokens, or pixels), True = masked.

        Drawn from the samples' (B,) ``keys``, or from ``generator`` without them.
        """
        size = self.image_size // self.unit
        return block_mask(batch, size, self.mask_patch // self.unit, self.mask_ratio, device, generator, keys)

    def pixel_mask(self, mask: Tensor) -> Tensor:
        """(B, h, w) unit mask -> (B, 1, h * unit, w * unit) pixel mask."""
        return mask.repeat_interleave(self.unit, dim=1).repeat_interleave(self.unit, dim=2).unsqueeze(1)

    def forward_encoder(self, images: Tensor, mask: Tensor) -> Tensor:
        """Encode masked images.

        Args:
            images: (B, 3, S, S) normalized.
            mask: (B, S / unit, S / unit) bool from :meth:`draw_mask`.

        Returns:
            (B, C, S / stride, S / stride) the last feature map (a ViT's patch tokens as a map).
        """
        images = images.contiguous(memory_format=self.memory_format)
        if not self.masks_tokens:
            inputs = self.fill(images, self.pixel_mask(mask))  # the encoder never sees a masked pixel
            last = self.encoder.stage_names[-1]
            return self.encoder.forward_features(inputs, [last])[last]
        grid = mask.shape[-1]
        tokens = self.vit.embed_patches(images)  # (B, L, D), position embedding included
        position = self.vit.patch_position_embedding(grid, grid)  # (1, L, D)
        # SimMIM swaps the patch embedding for the mask token before the position embedding is added:
        # the same as swapping after it for the mask token plus the position embedding.
        mask_tokens = self.fill.value.to(tokens.dtype) + position
        tokens = torch.where(mask.flatten(1).unsqueeze(-1), mask_tokens, tokens)
        patches = self.vit.encode_tokens(tokens)[:, 1:]
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, grid, grid)

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean absolute error over the masked pixels only.

        Args:
            images: (B, 3, S, S) the unmasked images.
            pred: (B, 3, S, S) predicted images.
            mask: (B, S / unit, S / unit) bool.

        Returns:
            () the mean over masked pixels and channels of the absolute error.
        """
        pixels = self.pixel_mask(mask).to(pred.dtype)
        return ((pred - images).abs() * pixels).sum() / (pixels.sum() * images.shape[1])

    def predict(self, images: Tensor, mask: Tensor) -> Tensor:
        """(B, 3, S, S) images, (B, S / unit, S / unit) mask -> (B, 3, S, S) predicted images."""
        return cast(Tensor, self.head(self.forward_encoder(images, mask)))

    def pretext_step(self, images: Tensor, keys: Tensor | None = None) -> StepOutput:
        mask = self.draw_mask(images.shape[0], images.device, keys=keys)
        return StepOutput(self.forward_loss(images, self.predict(images, mask), mask))

    # -- for people to look at -----------------------------------------------------------------
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) normalized images -> (B, 1, S, S) float mask, (B, 3, S, S) prediction."""
        mask = self.draw_mask(images.shape[0], images.device, generator)
        return self.pixel_mask(mask).float(), self.predict(images, mask)
