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
    except OSError as e:
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


def raise_if_disk_full(error: OSError, path: str | os.PathLike[str]) -> None:
    """Turn a full disk (ENOSPC, EDQUOT) while writing ``path`` into a DiskFullError naming it and the free space."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free: int | None = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = None
    raise DiskFullError(str(path), free) from error
