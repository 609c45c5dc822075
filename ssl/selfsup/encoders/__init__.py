"""Encoders behind one interface (:class:`Encoder`), and their export format."""

from selfsup.encoders.base import Encoder, feature_shapes
from selfsup.encoders.export import load, read_spec, save
from selfsup.encoders.nin import NINEncoder
from selfsup.encoders.resnet import ResNetEncoder
from selfsup.encoders.vit import ViTEncoder

__all__ = [
    "Encoder",
    "NINEncoder",
    "ResNetEncoder",
    "ViTEncoder",
    "feature_shapes",
    "load",
    "read_spec",
    "save",
]
