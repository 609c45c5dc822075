"""Switching a module to eval mode for a while, and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def evaluating(module: M) -> Iterator[M]:
    """Within the block ``module`` is in eval mode; afterwards it is in the mode it had before.

    Restores through ``module.train(mode)``, so a module that overrides ``train`` (a fine-tuner whose
    frozen stages must stay in eval mode) keeps its own rule.

    Example:
        >>> with evaluating(encoder), torch.no_grad():
        ...     features = encoder(images)
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
