"""ResNet encoders (He et al. 2016) built from torchvision's ResNet, without the classifier.

``cifar_stem=True`` replaces the 7x7 stride-2 convolution and the max-pool with one 3x3 stride-1
convolution, the usual change for 32-64 px images (the standard stem would shrink a 32 px image to
8x8 before the first residual stage). ``cifar_stem: auto`` in the config takes the small stem when the
encoder's inputs are smaller than the standard stem's downsampling (32 px), as Jigsaw's tiles often are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models import resnet

from selfsup.encoders.base import AUTO, Encoder

_BUILDERS: dict[int, Callable[..., resnet.ResNet]] = {
    18: resnet.resnet18,
    34: resnet.resnet34,
    50: resnet.resnet50,
    101: resnet.resnet101,
    152: resnet.resnet152,
}


class ResNetEncoder(Encoder):
    """A torchvision ResNet as a headless encoder.

    Args:
        depth: 18, 34, 50, 101 or 152.
        cifar_stem: 3x3 stride-1 first convolution and no max-pool (for 32-64 px images). No default:
            the yaml's ``auto`` is chosen by :meth:`settings_for_input`.
        zero_init_residual: start each residual branch's last BatchNorm at zero (Goyal et al. 2017).

    Features: ``stem`` (B, 64, H/4, W/4) or (B, 64, H, W) with the CIFAR stem, then ``stage1``..
    ``stage4`` halving the resolution from stage2 on; ``pooled`` is (B, out_dim).

    Example:
        >>> enc = ResNetEncoder(depth=18, cifar_stem=True)
        >>> enc(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """

    stage_names = ("stem", "stage1", "stage2", "stage3", "stage4")

    # The standard stem (7x7 stride 2, max-pool) and stages 2-4 halve the resolution 5 times.
    standard_downsampling = 32

    def __init__(self, depth: int, cifar_stem: bool, zero_init_residual: bool = False) -> None:
        super().__init__()
        if not isinstance(cifar_stem, bool):
            raise ValueError(f"cifar_stem must be true, false or auto (in a config), got {cifar_stem!r}")
        if depth not in _BUILDERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
        self.cifar_stem = cifar_stem
        net = _BUILDERS[depth](weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stage1, self.stage2, self.stage3, self.stage4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = net.fc.in_features
        self.downsampling = 8 if cifar_stem else self.standard_downsampling

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.pool(x).flatten(1)

    def forward_features(
        self, images: Tensor, layers: Sequence[str], token_pool: str | None = None
    ) -> dict[str, Tensor]:
        """See :meth:`Encoder.forward_features`; ``token_pool`` does not apply (no tokens)."""
        return self.chained_features(
            images, layers, [(n, getattr(self, n)) for n in self.stage_names], self.pool
        )

    def stage_modules(self) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        return [(name, [getattr(self, name)]) for name in self.stage_names]

    @property
    def probe_layers(self) -> tuple[str, ...]:
        """The middle stages, where pretext features peak (Goyal et al. 2019; benchmarks/README.md)."""
        return ("stage2", "stage3")

    @classmethod
    def settings_for_input(cls, settings: dict[str, Any], input_size: int) -> dict[str, Any]:
        """``cifar_stem: auto`` is the small stem for inputs under 32 px, where the standard one fails."""
        if settings.get("cifar_stem") == AUTO:
            settings = {**settings, "cifar_stem": input_size < cls.standard_downsampling}
        return settings

    def check_image_size(self, image_size: int) -> None:
        if image_size < self.downsampling:
            stem = "CIFAR stem" if self.cifar_stem else "standard stem"
            hint = "" if self.cifar_stem else "; encoder.cifar_stem=true (or auto) takes images down to 8 px"
            raise ValueError(
                f"a ResNet with the {stem} downsamples by {self.downsampling}, so it needs images of at "
                f"least {self.downsampling} px, got {image_size} px{hint}"
            )
