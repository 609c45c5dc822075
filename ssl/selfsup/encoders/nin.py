"""Network-in-Network encoder of RotNet (Gidaris, Singh & Komodakis, ICLR 2018), without its classifier.

The layers follow the official ``architectures/NetworkInNetwork.py`` of gidariss/FeatureLearningRotNet
(commit edafaba): every convolution is bias-free and followed by BatchNorm and ReLU, and a block is
three of them:

==========  =========================================  ===============================  ===========
block       convolutions (in -> out channels)          pooling after the convolutions   output
==========  =========================================  ===============================  ===========
block1      5x5 3->192, 1x1 192->160, 1x1 160->96      max 3x3, stride 2, padding 1     96 x H/2
block2      5x5 96->192, 1x1 192->192, 1x1 192->192    average 3x3, stride 2, padding 1 192 x H/4
block3..5   3x3 192->192, 1x1 192->192, 1x1 192->192   none (``avg_pool_block3``: as       192 x H/4
                                                       block2, after block3 only)
==========  =========================================  ===============================  ===========

The paper's text says 3x3 for every block but the first; the official code, which this follows, has a
5x5 convolution in block 2 too. Its CIFAR-10 RotNet configs set ``use_avg_on_conv3=False`` (the
option ``avg_pool_block3`` here; the official default only applies to 4 or more blocks). The official
``weight_initialization`` is never called, so the weights start at PyTorch's defaults, as here.
Average pooling counts the zero padding (PyTorch's default, as the official code).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from selfsup.encoders.base import Encoder

WIDE, MIDDLE, NARROW = 192, 160, 96  # the official nChannels, nChannels2, nChannels3
BLOCK_CHOICES = (3, 4, 5)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A bias-free ``kernel_size`` convolution (stride 1, same padding), BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def nin_block(in_channels: int, mid_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """One NIN block without pooling: a ``kernel_size`` convolution, then two 1x1 convolutions."""
    return nn.Sequential(
        conv_bn_relu(in_channels, WIDE, kernel_size),
        conv_bn_relu(WIDE, mid_channels, 1),
        conv_bn_relu(mid_channels, out_channels, 1),
    )


def _pool(kind: type[nn.MaxPool2d] | type[nn.AvgPool2d]) -> nn.Module:
    return kind(kernel_size=3, stride=2, padding=1)


class NINEncoder(Encoder):
    """RotNet's Network-in-Network as a headless encoder.

    Args:
        num_blocks: 3, 4 or 5 blocks (the paper's RotNet-NIN3/4/5; 4 is its CIFAR-10 model).
        avg_pool_block3: average-pool after block 3 as after block 2 (the official option
            ``use_avg_on_conv3``, which its CIFAR-10 configs turn off); only with 4 or more blocks.

    Features: ``block1`` (B, 96, H/2, W/2), ``block2`` (B, 192, H/4, W/4), ``block3``..``blockN``
    (B, 192, H/4, W/4), or H/8 from block 3 on with ``avg_pool_block3``; ``pooled`` is the global
    average of the last block, (B, 192). Sizes round up (``ceil(H / 2)`` per pooling).

    Example:
        >>> enc = NINEncoder(num_blocks=4)
        >>> enc(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 192])
    """

    def __init__(self, num_blocks: int = 4, avg_pool_block3: bool = False) -> None:
        super().__init__()
        if num_blocks not in BLOCK_CHOICES:
            raise ValueError(f"a NIN has one of {list(BLOCK_CHOICES)} blocks, got num_blocks={num_blocks}")
        if avg_pool_block3 and num_blocks == 3:
            raise ValueError("avg_pool_block3 needs 4 or more blocks (the official code ignores it for 3)")
        self.stage_names = tuple(f"block{i}" for i in range(1, num_blocks + 1))
        blocks = [
            nn.Sequential(*nin_block(3, MIDDLE, NARROW, 5), _pool(nn.MaxPool2d)),
            nn.Sequential(*nin_block(NARROW, WIDE, WIDE, 5), _pool(nn.AvgPool2d)),
        ]
        for i in range(3, num_blocks + 1):
            block = nin_block(WIDE, WIDE, WIDE, 3)
            if i == 3 and avg_pool_block3:
                block.append(_pool(nn.AvgPool2d))
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = WIDE
        self.downsampling = 8 if avg_pool_block3 else 4

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 192): the global average of the last block."""
        x = images
        for block in self.blocks:
            x = block(x)
        return self.pool(x).flatten(1)

    def forward_features(
        self, images: Tensor, layers: Sequence[str], token_pool: str | None = None
    ) -> dict[str, Tensor]:
        """See :meth:`Encoder.forward_features`; ``token_pool`` does not apply (no tokens)."""
        return self.chained_features(
            images, layers, list(zip(self.stage_names, self.blocks, strict=True)), self.pool
        )

    def stage_modules(self) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        return [(name, [block]) for name, block in zip(self.stage_names, self.blocks, strict=True)]

    @property
    def probe_layers(self) -> tuple[str, ...]:
        """Blocks 2 and 3: the paper's best RotNet features on CIFAR-10 are block 2's (its Table 1)."""
        return ("block2", "block3")

    def check_image_size(self, image_size: int) -> None:
        if image_size < self.downsampling:
            raise ValueError(
                f"a NIN pools by {self.downsampling} (stride-2 poolings), so it needs images of at least "
                f"{self.downsampling} px, got {image_size} px"
            )
