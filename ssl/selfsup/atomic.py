"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A reader (or a run resumed after a kill) sees the old file or the new one, never a half-written one.
The temporary file lives in the target's own folder, so the rename never crosses file systems, and it
is removed when writing fails (a full disk, an exception in the writer); a full disk is reported as a
:class:`~selfsup.errors.DiskFullError` naming the file and the space left.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from selfsup.errors import DiskFullError

TEMP_MARKER = ".tmp-"


def temp_path(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A unique hidden name beside ``path``: ``.<name>.tmp-<pid>-<random><suffix>``.

    Unique per process and call, so DDP ranks or two jobs writing the same file never collide.
    ``suffix`` serves writers that insist on an extension (``numpy.savez`` appends ``.npz``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], suffix: str = "") -> Path:
    """Call ``write(tmp)`` to write a temporary file, then rename it to ``path``.

    Args:
        path: the file to create or replace; its folder is created if needed.
        write: writes the whole content to the path it is given.
        suffix: extension the temporary name must end with (see :func:`temp_path`).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as e:  # writers wrap the OSError: torch's RuntimeError, safetensors' SafetensorError
        raise_if_disk_full(e, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and TEMP_MARKER in p.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# How writers that wrap the OSError spell a full disk (safetensors: "I/O error: ... (os error 28)").
_DISK_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
# Below this, a failed write is blamed on the disk even when the writer lost the errno (torch.save's
# "unexpected pos" RuntimeError).
_NEARLY_FULL_BYTES = 1 << 20


def raise_if_disk_full(error: BaseException, path: str | os.PathLike[str]) -> None:
    """Turn a full disk (or quota) while writing ``path`` into a DiskFullError naming it and the free space.

    A full disk is recognised from ENOSPC/EDQUOT anywhere in the exception's chain, from a writer's
    message that spells it, or from the file system having (almost) nothing left.
    """
    try:
        free: int | None = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = None
    nearly_full = free is not None and free < _NEARLY_FULL_BYTES
    if nearly_full or any(_says_disk_full(e) for e in _chain(error)):
        raise DiskFullError(str(path), free) from error


def _says_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    message = str(error).lower()
    return any(m in message for m in _DISK_FULL_MESSAGES)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling (``__cause__``, ``__context__``)."""
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.append(e)
        stack += [c for c in (e.__cause__, e.__context__) if c is not None]
    return seen
