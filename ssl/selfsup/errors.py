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


class CheckpointError(DataError):
    """A checkpoint cannot be read (empty, truncated, not a checkpoint); the message names the file."""


class NonFiniteError(SelfsupError):
    """The loss, gradients or weights became NaN or inf; nothing non-finite was saved or exported."""


class DiskFullError(SelfsupError):
    """A write failed because its file system is full (or over quota).

    Args:
        path: the file that could not be written.
        free_bytes: what the file system had left when the write failed, or None if unknown.
    """

    def __init__(self, path: str, free_bytes: int | None) -> None:
        self.path = path
        self.free_bytes = free_bytes
        free = "unknown" if free_bytes is None else f"{free_bytes / 2**20:.1f} MiB"
        super().__init__(
            f"no space left on the device writing {path} (free: {free}); the previous version of the file "
            "is intact: free some space and run the same command with resume=auto"
        )


class RunDirBusyError(SelfsupError):
    """Another live process holds the run directory's lock."""


class Interrupted(SelfsupError):
    """The run was stopped by Ctrl-C or SIGTERM; printed as ``interrupted: ...`` with the shell's exit code
    for that signal: 130 (128 + SIGINT) or 143 (128 + SIGTERM)."""

    exit_code = 130
    prefix = "interrupted"

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
