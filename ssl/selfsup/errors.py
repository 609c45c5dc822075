"""Errors meant for the person running selfsup: each names what was wrong and where."""

from __future__ import annotations


class SelfsupError(Exception):
    """Base class of the errors that the command line prints without a stack trace."""


class ConfigError(SelfsupError):
    """A composed config value is invalid.

    Args:
        key: the dotted config key at fault, e.g. ``data.batch_size``.
        problem: what is wrong with it and what is allowed instead.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class DataError(SelfsupError):
    """Input data is missing or unreadable; the message names the path."""


class UnreadableImageError(DataError):
    """An image file could not be decoded (raised when ``data.on_bad_image=error``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot decode image {path}: {reason}")
