"""The one interface every encoder implements, so tasks and evaluation never ask which kind it is."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from selfsup.modes import evaluating

AUTO = "auto"  # an encoder setting the framework chooses from the input size (Encoder.settings_for_input)


class Encoder(nn.Module):
    """A headless image encoder.

    Subclasses set ``out_dim`` and ``stage_names`` and implement ``stage_modules`` and
    ``forward_features``; ``forward`` returns pooled features. ``config`` is recorded from the
    constructor's arguments (every parameter, defaults included) when the constructor returns, so
    every option reaches exports; constructors therefore take named parameters only (no ``*args``).

    Attributes:
        out_dim: size of the pooled feature vector returned by ``forward``.
        stage_names: names of the intermediate features, in forward order (``stem``, ``stage1``..
            for a ResNet; ``patch_embed``, ``block1``.. for a ViT). ``forward_features`` accepts them,
            and freezing "the first k stages" counts in this order.
        config: the constructor's arguments with a ``_target_``, enough to rebuild the encoder
            (``hydra.utils.instantiate(encoder.config)``); written next to exported weights.
        token_pool: how ``pooled`` reduces a token sequence unless a call says otherwise (``cls`` or
            ``mean``); None for encoders whose features are maps.
        constant_prefix_layers: token layers whose prefix (class) token is the same for every image
            (a ViT's patch embedding: the learned class token before any block mixed it with the
            patches); :meth:`layer_token_pool` pools them by the mean of the patch tokens.
    """

    out_dim: int
    stage_names: tuple[str, ...]
    config: dict[str, Any]
    token_pool: str | None = None
    constant_prefix_layers: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording_config(init)  # type: ignore[method-assign]

    def forward(self, images: Tensor) -> Tensor:
        """Pooled features.

        Args:
            images: (B, 3, H, W) normalized float images.

        Returns:
            (B, out_dim) features.
        """
        raise NotImplementedError

    def forward_features(
        self, images: Tensor, layers: Sequence[str], token_pool: str | None = None
    ) -> dict[str, Tensor]:
        """Named intermediate features; the forward pass stops after the deepest one requested.

        Args:
            images: (B, 3, H, W) normalized float images.
            layers: names from ``stage_names`` (and ``pooled`` for the ``forward`` output).
            token_pool: for token encoders, how ``pooled`` reduces the tokens (``cls`` or ``mean``)
                instead of the encoder's own ``token_pool``; ignored by encoders without tokens.

        Returns:
            name -> feature map: (B, C, h, w) for convolutional stages, (B, T, D) for token stages.
        """
        raise NotImplementedError

    def chained_features(
        self, images: Tensor, layers: Sequence[str], stages: Sequence[tuple[str, nn.Module]], pool: nn.Module
    ) -> dict[str, Tensor]:
        """``forward_features`` of an encoder that is a chain of stages (a ResNet, the NIN).

        Runs ``stages`` (name, module) in order and stops after the deepest requested one; ``pooled``
        is ``pool`` of the last stage's output, flattened to (B, out_dim).
        """
        self.check_layers(layers)
        wanted = set(layers)
        out: dict[str, Tensor] = {}
        x = images
        for name, stage in stages:
            if wanted.issubset(out):
                break
            x = stage(x)
            if name in wanted:
                out[name] = x
        if "pooled" in wanted:
            out["pooled"] = pool(x).flatten(1)
        return {name: out[name] for name in layers}

    def layer_token_pool(self, layer: str, token_pool: str) -> str:
        """How the tokens of ``layer`` are pooled for a probe that asked for ``token_pool``.

        ``mean`` at a layer whose class token carries nothing about the image, since probing a vector
        that is the same for every image would report chance accuracy as a result.
        """
        return "mean" if layer in self.constant_prefix_layers else token_pool

    def stage_modules(self) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        """The modules and loose parameters of each stage, in ``stage_names`` order (for freezing)."""
        raise NotImplementedError

    @property
    def probe_layers(self) -> tuple[str, ...]:
        """The features ``layers: default`` probes (the main job's): ``pooled`` unless a family says.

        Fixed per encoder family in advance, never chosen on test results.
        """
        return ("pooled",)

    def check_image_size(self, image_size: int) -> None:
        """Raise ``ValueError`` saying why when this encoder cannot take square images of this size."""

    @classmethod
    def settings_for_input(cls, settings: dict[str, Any], input_size: int) -> dict[str, Any]:
        """``settings`` (the encoder's config) with each ``auto`` value chosen for ``input_size`` px inputs.

        The framework calls it before building the encoder, with the size of what the encoder will
        see: the pretext task's inputs (Jigsaw's tiles) in pretraining, the images elsewhere. An
        encoder whose structure depends on its input size (a ResNet's stem, a ViT's position grid)
        overrides it; the chosen values are logged and recorded in the encoder's ``config``.
        """
        return settings

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise ``ValueError`` listing the allowed names when a requested feature does not exist."""
        allowed = (*self.stage_names, "pooled")
        unknown = [name for name in layers if name not in allowed]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; this encoder has {list(allowed)}")


def _plain(value: Any) -> Any:
    """A constructor argument as plain yaml-safe data (tuples and OmegaConf containers become lists, dicts)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _recording_config(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an encoder constructor so that, when it returns, ``self.config`` holds its bound arguments."""
    signature = inspect.signature(init)
    variadic = [p.name for p in signature.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise TypeError(
            f"{init.__qualname__} takes {variadic}: an encoder's constructor takes named parameters only, "
            "so that its config can rebuild it"
        )

    @functools.wraps(init)
    def wrapper(self: Encoder, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        # A subclass's constructor returns after its parent's: the most derived class's arguments win.
        arguments = {name: _plain(value) for name, value in list(bound.arguments.items())[1:]}
        self.config = {"_target_": target_of(self), **arguments}

    return wrapper


def target_of(obj: object) -> str:
    """The import path that hydra's ``_target_`` needs to rebuild an object of this class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@torch.no_grad()
def feature_shapes(encoder: Encoder, image_size: int, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of each named feature for one image of ``image_size`` (without the batch dimension)."""
    with evaluating(encoder):
        device = next(encoder.parameters()).device
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        return {name: tuple(t.shape[1:]) for name, t in encoder.forward_features(probe, layers).items()}
