"""MAE: masked autoencoders (He, Chen, Xie, Li, Dollár & Girshick, "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022), for ViT encoders.

Protocol details that matter (paper Sec. 3 and Appendix A.1; facebookresearch/mae ``models_mae.py``):

- per-sample random masking of the patch tokens by argsort of uniform noise, ``mask_ratio`` 0.75;
  ``round(L * (1 - mask_ratio))`` tokens stay visible (:mod:`selfsup.tasks.masking`);
- the encoder sees only the visible tokens (with their fixed 2-D sin-cos position embedding) plus the
  class token: a quarter of the tokens, which is what makes MAE cheap per image;
- a light decoder of its own width, depth and heads (the paper's 8 blocks x 512 wide x 16 heads for
  ViT-B/L/H) takes the projected encoder tokens plus one shared, learned mask token per masked patch,
  restored to the natural order, with its own fixed sin-cos position embedding, and predicts each
  patch's pixels with a linear layer;
- loss: mean squared error over the masked patches only; with ``norm_pix_loss`` (on by default, the
  paper's Table 1(c)) each target patch is first normalized by its own mean and variance;
- optimizer: AdamW, betas (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x effective batch / 256, cosine
  schedule with warmup (``conf/optim/adamw_mae.yaml``, ``conf/experiment/mae_*.yaml``).

Downstream, the exported encoder runs on all tokens as any ViT does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
from pytorch_lightning import Callback
from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock

from selfsup.encoders.base import Encoder
from selfsup.encoders.vit import ViTEncoder, sincos_position_embedding, xavier_linears
from selfsup.reports.reconstructions import ReconstructionGrids
from selfsup.tasks.base import PretextTask, StepOutput
from selfsup.tasks.masking import num_visible, patchify, random_masking, unpatchify, unshuffle
from selfsup.training.optim import OptimSettings

NORM_PIX_EPS = 1e-6  # MAE's epsilon inside the per-patch standard deviation


class MAEDecoder(nn.Module):
    """MAE's decoder: encoder tokens + mask tokens in natural order -> pixels of every patch.

    Args:
        encoder_width: width of the encoder's tokens.
        patch_size: side of a patch in pixels.
        grid_size: patches per side of the images the model is built for (the position embedding is
            recomputed for other square grids).
        width: decoder token width (a multiple of 4 and of ``num_heads``).
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of each block's MLP over ``width``.
    """

    def __init__(
        self,
        encoder_width: int,
        patch_size: int,
        grid_size: int,
        width: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"decoder_width {width} is not a multiple of decoder_heads {num_heads}")
        self.width = width
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.Sequential(
            *(EncoderBlock(num_heads, width, int(width * mlp_ratio), 0.0, 0.0) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, patch_size * patch_size * 3)
        # Fixed, so derived rather than saved: (1, L, width) for the native grid.
        self.register_buffer(
            "pos_embedding", sincos_position_embedding(grid_size, width).unsqueeze(0), persistent=False
        )
        self.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """The mask token is not weight-decayed (:mod:`selfsup.training.optim`; MAE's own pretraining decays it)."""
        return {"mask_token"}

    def reset_parameters(self) -> None:
        """MAE's initialization: mask token N(0, 0.02), linear layers Xavier-uniform with zero bias."""
        nn.init.normal_(self.mask_token, std=0.02)
        xavier_linears(self)

    def position_embedding(self, num_patches: int) -> Tensor:
        """(1, num_patches, width) for a square grid of ``num_patches`` patches."""
        pos = cast(Tensor, self.pos_embedding)
        if num_patches == pos.shape[1]:
            return pos
        side = round(num_patches**0.5)
        return sincos_position_embedding(side, self.width).to(pos).unsqueeze(0)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict the pixels of every patch.

        Args:
            latent: (B, 1 + K, encoder_width) encoded class token and K visible tokens, in masking order.
            ids_restore: (B, L) from :func:`~selfsup.tasks.masking.random_masking`.

        Returns:
            (B, L, patch_size * patch_size * 3) predicted patch pixels, in natural patch order.
        """
        x = self.embed(latent)
        batch, length = ids_restore.shape
        fillers = self.mask_token.to(x.dtype).expand(batch, length - (x.shape[1] - 1), -1)
        patches = unshuffle(torch.cat([x[:, 1:], fillers], dim=1), ids_restore)
        patches = patches + self.position_embedding(length)  # the class token's position embedding is 0
        x = self.norm(self.blocks(torch.cat([x[:, :1], patches], dim=1)))
        return self.pred(x[:, 1:])


class MAE(PretextTask):
    """Masked autoencoder pretraining of a ViT.

    Args:
        encoder: a :class:`~selfsup.encoders.vit.ViTEncoder`.
        mask_ratio: fraction of the patches hidden from the encoder in each image.
        decoder_width: decoder token width (512 in the paper).
        decoder_depth: decoder blocks (8 in the paper).
        decoder_heads: decoder attention heads (16 in the paper).
        decoder_mlp_ratio: decoder MLP width over ``decoder_width``.
        norm_pix_loss: predict each patch normalized by its own mean and variance.
        reconstructions: ``every_n_epochs`` and ``num_images`` of the reconstruction grids saved in
            the run directory (:class:`~selfsup.reports.reconstructions.ReconstructionGrids`); None: none.
            Required (conf/task/mae.yaml sets it).
        optim: see :class:`~selfsup.tasks.base.PretextTask`.
        schedule: see :class:`~selfsup.tasks.base.PretextTask`.

    Example:
        >>> encoder = ViTEncoder(image_size=32, patch_size=4, width=192, depth=12, num_heads=3)
        >>> task = MAE(encoder, reconstructions=None)
        >>> task.pretext_step(torch.randn(8, 3, 32, 32)).loss
    """

    def __init__(
        self,
        encoder: Encoder,
        mask_ratio: float = 0.75,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        *,
        reconstructions: Mapping[str, int] | None,
        optim: OptimSettings | None = None,
        schedule: Callable | None = None,
    ) -> None:
        if not isinstance(encoder, ViTEncoder):
            raise ValueError(
                "MAE encodes only the visible patch tokens, so it needs a ViT encoder (encoder=vit_tiny, "
                f"vit_small or vit_base), got {type(encoder).__name__}; SimMIM (task=simmim) takes any encoder"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be strictly between 0 and 1, got {mask_ratio}")
        super().__init__(encoder, optim, schedule)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_size
        self.reconstructions = dict(reconstructions) if reconstructions is not None else None
        self.decoder = MAEDecoder(
            encoder.out_dim,
            encoder.patch_size,
            encoder.grid_size,
            decoder_width,
            decoder_depth,
            decoder_heads,
            decoder_mlp_ratio,
        )

    @property
    def vit(self) -> ViTEncoder:
        return cast(ViTEncoder, self.encoder)

    def check_input(self, image_size: int) -> None:
        self.encoder.check_image_size(image_size)
        num_visible((image_size // self.patch_size) ** 2, self.mask_ratio)

    def configure_callbacks(self) -> list[Callback]:
        return [ReconstructionGrids(**self.reconstructions)] if self.reconstructions is not None else []

    # -- the model -----------------------------------------------------------------------------
    def forward_encoder(
        self,
        images: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask each image's patches at random and encode the visible ones.

        Args:
            images: (B, 3, S, S) normalized, S a multiple of the patch size.
            generator: random source of the masks when ``keys`` is None (on the images' device).
            noise: (B, L) values that decide the masks instead (the smallest stay visible).
            keys: (B,) int64 sample keys the masks are drawn from.

        Returns:
            latent: (B, 1 + K, width) encoded class token and K visible tokens, in masking order.
            mask: (B, L) float, 1 for masked patches, in natural order.
            ids_restore: (B, L) to put tokens back in natural order.
        """
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"MAE needs square images, got {tuple(images.shape[-2:])}")
        tokens = self.vit.embed_patches(images.contiguous(memory_format=self.memory_format))
        visible, mask, ids_restore = random_masking(tokens, self.mask_ratio, generator, noise, keys)
        return self.vit.encode_tokens(visible), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(B, 1 + K, width) latent, (B, L) ids_restore -> (B, L, p * p * 3) predicted patches."""
        return cast(Tensor, self.decoder(latent, ids_restore))

    def patch_targets(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, L, p * p * 3) what the decoder should predict for every patch.

        With ``norm_pix_loss`` each patch's pixels (all channels together) are standardized by their
        own mean and unbiased variance, as in MAE's ``forward_loss``.
        """
        target = patchify(images, self.patch_size)
        if not self.norm_pix_loss:
            return target
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        return (target - mean) / (var + NORM_PIX_EPS).sqrt()

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches only.

        Args:
            images: (B, 3, S, S) the unmasked images.
            pred: (B, L, p * p * 3) predicted patches.
            mask: (B, L), 1 for masked patches.

        Returns:
            () the mean over masked patches of each patch's mean squared pixel error.
        """
        per_patch = (pred - self.patch_targets(images)).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def pretext_step(self, images: Tensor, keys: Tensor | None = None) -> StepOutput:
        latent, mask, ids_restore = self.forward_encoder(images, keys=keys)
        pred = self.forward_decoder(latent, ids_restore)
        return StepOutput(self.forward_loss(images, pred, mask))

    # -- for people to look at -----------------------------------------------------------------
    def reconstruct(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Masks and predicted images, for reconstruction grids.

        With ``norm_pix_loss`` the decoder predicts normalized patches; they are mapped back with each
        true patch's own mean and variance (the prediction says nothing about them), so the picture
        shows the predicted structure at the true brightness and contrast.

        Args:
            images: (B, 3, S, S) normalized.
            generator: random source of the masks.

        Returns:
            mask: (B, 1, S, S) float, 1 on masked pixels.
            prediction: (B, 3, S, S) in the images' normalized units.
        """
        latent, mask, ids_restore = self.forward_encoder(images, generator)
        pred = self.forward_decoder(latent, ids_restore)
        if self.norm_pix_loss:
            target = patchify(images, self.patch_size)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS).sqrt() + mean
        pixel_mask = unpatchify(mask.unsqueeze(-1).expand(-1, -1, self.patch_size**2), self.patch_size, 1)
        return pixel_mask, unpatchify(pred, self.patch_size)
