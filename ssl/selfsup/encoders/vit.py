"""Vision Transformer encoders (Dosovitskiy et al. 2021) on torchvision's VisionTransformer.

Besides the pooled ``forward`` the encoder exposes the pieces that masked-image pretraining needs
(MAE encodes only the visible tokens): ``embed_patches`` (patch embedding plus position embedding),
``add_class_token``, ``blocks`` and ``norm``, and ``encode_tokens``, which runs the last three on any
set of tokens. Position embeddings are fixed 2-D sin-cos (as in MAE) or learned (torchvision's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
from torchvision.ops import StochasticDepth

from selfsup.encoders.base import AUTO, Encoder


def sincos_position_embedding(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE's ``get_2d_sincos_pos_embed``).

    Args:
        grid_size: patches per side.
        dim: embedding width, a multiple of 4.

    Returns:
        (grid_size * grid_size, dim): half the channels encode the row, half the column.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: Tensor) -> Tensor:  # (L,) -> (L, dim/2)
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    # MAE encodes the column (w) coordinate first, then the row (h).
    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class ViTEncoder(Encoder):
    """A torchvision VisionTransformer as a headless encoder.

    Args:
        image_size: side of the square images it is built for (the position embedding's grid), a
            multiple of ``patch_size``; other multiples of the patch size work with a resized embedding.
            The yamls' ``auto`` is the size of what the encoder will see (:meth:`settings_for_input`).
        patch_size: side of a square patch.
        width: token width (192 tiny, 384 small, 768 base).
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of each block's MLP over ``width``.
        pool: ``cls`` (the class token) or ``mean`` for the pooled output, both through the final
            LayerNorm: ``mean`` averages the last block's patch tokens and then normalizes, as MAE's
            ``fc_norm(x[:, 1:].mean(dim=1))`` (its global pooling for fine-tuning); kept as
            :attr:`token_pool` (``pool`` is the export config's key).
        pos_embed: ``sincos`` (fixed, MAE) or ``learned``.
        init: ``torchvision`` (VisionTransformer's own initialization) or ``mae`` (MAE's
            ``initialize_weights``: the patch projection Xavier-uniform as the Linear it is, the class
            token N(0, 0.02), every Linear Xavier-uniform with zero bias, LayerNorms at 1 and 0).

    Parameters are keyword-only. ``image_size``, ``width`` and ``num_heads`` have no defaults: the
    encoder yamls set them (conf/encoder/vit_*.yaml).

    Features: ``patch_embed`` and ``block1``..``block{depth}`` are (B, 1 + L, width) token sequences
    with the class token first; ``pooled`` is (B, width) after the final LayerNorm.

    Example:
        >>> enc = ViTEncoder(image_size=32, patch_size=4, width=192, depth=12, num_heads=3)
        >>> enc(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 192])
    """

    num_prefix_tokens = 1
    constant_prefix_layers = ("patch_embed",)

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int = 16,
        width: int,
        depth: int = 12,
        num_heads: int,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        pos_embed: str = "sincos",
        init: str = "torchvision",
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if init not in ("torchvision", "mae"):
            raise ValueError(f"init must be 'torchvision' or 'mae', got {init!r}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        vit = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=depth,
            num_heads=num_heads,
            hidden_dim=width,
            mlp_dim=int(width * mlp_ratio),
        )
        self.image_size, self.patch_size, self.token_pool = image_size, patch_size, pool
        self.pos_embed = pos_embed
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding  # (1, 1 + L, width), class token first
        if pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embedding.zero_()
                self.pos_embedding[0, 1:] = sincos_position_embedding(self.grid_size, width)
            self.pos_embedding.requires_grad_(False)
        self.blocks = vit.encoder.layers
        for block in self.blocks:
            # torchvision's EncoderBlock has no stochastic depth. Rebuilding the blocks would rename
            # their parameters (and break every export), so each block becomes the subclass below,
            # whose only addition is a parameter-free StochasticDepth; at rate 0 it is the same block.
            block.__class__ = DropPathBlock
            block.drop_path = StochasticDepth(0.0, "row")
        self.norm = vit.encoder.ln
        self.out_dim = width
        self.stage_names = ("patch_embed", *(f"block{i + 1}" for i in range(depth)))
        if init == "mae":
            mae_init(self)

    def embed_patches(self, images: Tensor) -> Tensor:
        """Patch tokens with their position embedding, no class token.

        Args:
            images: (B, 3, H, W), H and W multiples of ``patch_size``. Sizes other than ``image_size``
                get a resized position embedding (recomputed sin-cos, or bicubic-interpolated learned).

        Returns:
            (B, L, width) tokens in row-major patch order, L = (H / patch_size) * (W / patch_size).
        """
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        tokens = self.patch_proj(images).flatten(2).transpose(1, 2)
        return tokens + self.patch_position_embedding(height // self.patch_size, width // self.patch_size)

    def patch_position_embedding(self, rows: int, cols: int) -> Tensor:
        """(1, rows * cols, width) position embedding of the patch tokens for a rows x cols grid."""
        pos = self.pos_embedding[:, 1:]
        if (rows, cols) == (self.grid_size, self.grid_size):
            return pos
        if self.pos_embed == "sincos" and rows == cols:
            return sincos_position_embedding(rows, self.out_dim).to(pos).unsqueeze(0)
        grid = pos.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)

    def add_class_token(self, tokens: Tensor) -> Tensor:
        """(B, L', width) -> (B, 1 + L', width): the class token (with its position embedding) first."""
        cls = (self.class_token + self.pos_embedding[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Run the transformer on any set of patch tokens: what MAE and SimMIM call instead of ``forward``.

        Args:
            tokens: (B, L', width) patch tokens that already carry their position embedding (from
                ``embed_patches``): all of them, a per-sample subset (MAE's visible tokens), or some
                replaced by a mask token (SimMIM).

        Returns:
            (B, 1 + L', width) tokens after the final LayerNorm, the class token first.
        """
        return self.norm(self.blocks(self.add_class_token(tokens)))

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth for fine-tuning (MAE: 0.1 for ViT-B): block k of d drops its residual
        branches with probability ``rate * k / (d - 1)``, from 0 at the first block (timm's rule)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        depth = len(self.blocks)
        for k, block in enumerate(self.blocks):
            block.drop_path.p = rate * k / max(1, depth - 1)

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay (timm's convention; :mod:`selfsup.training.optim`)."""
        return {"class_token", "pos_embedding"}

    def pool_tokens(self, tokens: Tensor, pool: str | None = None) -> Tensor:
        """(B, 1 + L, width) tokens of the last block, before the final LayerNorm -> (B, width).

        ``cls``: the normalized class token; ``mean``: the normalized mean of the patch tokens (MAE's
        ``fc_norm`` of the mean), not the mean of normalized tokens.

        Args:
            tokens: the class token first.
            pool: ``cls`` or ``mean``; None: this encoder's :attr:`token_pool`.
        """
        pool = pool or self.token_pool
        if pool == "cls":
            return self.norm(tokens[:, 0])
        if pool == "mean":
            return self.norm(tokens[:, self.num_prefix_tokens :].mean(dim=1))
        raise ValueError(f"token pool must be 'cls' or 'mean', got {pool!r}")

    def forward(self, images: Tensor) -> Tensor:
        return self.pool_tokens(self.blocks(self.add_class_token(self.embed_patches(images))))

    def forward_features(
        self, images: Tensor, layers: Sequence[str], token_pool: str | None = None
    ) -> dict[str, Tensor]:
        """See :meth:`Encoder.forward_features`; ``pooled`` pools by ``token_pool`` when given."""
        self.check_layers(layers)
        wanted = set(layers)
        tokens = self.add_class_token(self.embed_patches(images))
        out: dict[str, Tensor] = {"patch_embed": tokens}
        for i, block in enumerate(self.blocks):
            if wanted.issubset(out):
                break
            tokens = block(tokens)
            out[f"block{i + 1}"] = tokens
        if "pooled" in wanted:
            out["pooled"] = self.pool_tokens(tokens, token_pool)
        return {name: out[name] for name in layers}

    def stage_modules(self) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        embed: list[nn.Module | nn.Parameter] = [self.patch_proj, self.class_token, self.pos_embedding]
        blocks: list[tuple[str, list[nn.Module | nn.Parameter]]] = [
            (f"block{i + 1}", [b]) for i, b in enumerate(self.blocks)
        ]
        blocks[-1][1].append(self.norm)  # the final LayerNorm belongs to the last stage
        return [("patch_embed", embed), *blocks]

    @property
    def probe_layers(self) -> tuple[str, ...]:
        """The middle block and the pooled output (MAE's linear probe reads the last)."""
        return (f"block{len(self.blocks) // 2}", "pooled")

    @classmethod
    def settings_for_input(cls, settings: dict[str, Any], input_size: int) -> dict[str, Any]:
        """``image_size: auto`` is the size of the inputs: the position grid the encoder will see."""
        if settings.get("image_size") == AUTO:
            settings = {**settings, "image_size": input_size}
        return settings

    def check_image_size(self, image_size: int) -> None:
        if image_size % self.patch_size:
            raise ValueError(
                f"image size {image_size} px is not a multiple of the ViT's patch size {self.patch_size}"
            )


class DropPathBlock(EncoderBlock):
    """torchvision's transformer block with stochastic depth on both residual branches (timm's
    ``drop_path``): the same parameters and, at ``drop_path.p == 0``, the same function."""

    drop_path: StochasticDepth

    def forward(self, input: Tensor) -> Tensor:
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = input + self.drop_path(self.dropout(x))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def mae_init(encoder: ViTEncoder) -> None:
    """MAE's ``initialize_weights`` (models_mae.py) on a torchvision-built ViT.

    The patch projection is a Conv2d whose kernel equals its stride, i.e. a Linear on flattened
    patches: Xavier-uniform over its (width, 3 * p * p) view. Every Linear (the MLPs and attention
    output projections) Xavier-uniform with zero bias; the attention's fused input projection, a
    Parameter in torch's MultiheadAttention, the same over its (3 * width, width) matrix as timm's
    qkv Linear, with zero bias; LayerNorms weight 1, bias 0; the class token N(0, 0.02). The sin-cos
    position embedding is fixed and left as it is.
    """
    with torch.no_grad():
        weight = encoder.patch_proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))  # its bias stays torchvision's zero
        nn.init.normal_(encoder.class_token, std=0.02)
        xavier_linears(encoder)
        for module in encoder.modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                nn.init.xavier_uniform_(module.in_proj_weight)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def xavier_linears(module: nn.Module) -> None:
    """MAE's ``_init_weights`` for every ``nn.Linear`` in ``module``: Xavier-uniform weight, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
