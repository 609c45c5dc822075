"""Where images come from: folders, tar archives, torchvision's dataset classes, arrays, synthetic.

A source knows how many images it has and hands out one encoded (bytes) or decoded (uint8 CHW) image
with its label and a name for error messages. Decoding, augmentation and the bad-image policy live
once, in :mod:`selfsup.data.dataset`. Labels are class indices, or -1 for unlabeled images.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
UNLABELED = -1


@dataclass
class Sample:
    """One image as a source holds it.

    Attributes:
        data: encoded file bytes as a 1-D uint8 tensor, or a decoded (3, H, W) uint8 tensor.
        label: class index, or -1 when unlabeled.
        name: file path or archive member, shown in error messages.
    """

    data: Tensor
    label: int
    name: str


class ImageSource:
    """Base of all sources: ``len(source)``, ``source.get(i)``, ``classes`` and ``fingerprint()``."""

    classes: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> Sample:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """Where image ``index`` comes from (a file path, an archive member), for people to read."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A string that changes whenever the images or labels change (keys feature caches)."""
        raise NotImplementedError

    @property
    def labeled(self) -> bool:
        return self.classes is not None


def encoded(data: bytes) -> Tensor:
    """File bytes as a 1-D uint8 tensor; an empty file is an empty tensor (decoding names it a bad image)."""
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions)) and not Path(name).name.startswith(".")


def _require_dir(root: str | os.PathLike[str], what: str) -> Path:
    """``root`` as a folder that exists; an empty path (which would mean the working directory) is refused."""
    if not str(root).strip():
        raise DataError(f"{what}: the path is empty (it would scan the working directory); name a folder")
    path = Path(root).expanduser()
    if path.is_file():
        raise DataError(f"{what}: {path} is a file, not a folder of images")
    if not path.is_dir():
        raise DataError(f"{what}: folder {path} does not exist")
    return path


class FolderImages(ImageSource):
    """Image files under a folder.

    Args:
        root: the folder.
        labeled: when true, the first-level subfolders are the classes (torchvision's ImageFolder
            layout, ``root/<class>/**/<image>``); when false, images at any depth, labels ignored.
        extensions: file name endings that count as images.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labeled: bool,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = _require_dir(root, "image folder")
        extensions = tuple(e.lower() for e in extensions)
        if labeled:
            self.classes = sorted(
                d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
            )
            if not self.classes:
                raise DataError(
                    f"labeled image folder {self.root} has no class subfolders (expected root/<class>/<image>)"
                )
            groups = [(i, self.root / c) for i, c in enumerate(self.classes)]
        else:
            groups = [(UNLABELED, self.root)]
        self.files: list[str] = []
        self.labels: list[int] = []
        for label, folder in groups:
            found = sorted(
                os.path.join(dirpath, f)
                for dirpath, _, names in os.walk(folder, followlinks=True)
                for f in names
                if _is_image(f, extensions)
            )
            self.files += found
            self.labels += [label] * len(found)
        if not self.files:
            raise DataError(f"no images ({', '.join(extensions)}) found under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self.files[index]

    def get(self, index: int) -> Sample:
        with open(self.files[index], "rb") as f:
            data = encoded(f.read())
        return Sample(data, self.labels[index], self.name(index))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(self.root).encode())
        for path, label in zip(self.files, self.labels, strict=True):
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class ArchiveImages(ImageSource):
    """Images inside a zip or tar archive, read without unpacking it.

    A zip or an uncompressed ``.tar`` is read member by member (any size); a compressed tar
    (``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) cannot seek and is decompressed into memory once, so
    keep those small. Zip stores small files
    most compactly (a tar pads each member to 512 bytes).

    Args:
        path: the archive.
        prefix: only members under this folder, e.g. ``train/``.
        labeled: when true, the first folder below ``prefix`` is the class.
        extensions: member name endings that count as images.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        prefix: str = "",
        labeled: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DataError(f"image archive {self.path} does not exist")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        extensions = tuple(e.lower() for e in extensions)
        self.is_zip = zipfile.is_zipfile(self.path)
        self._blob: bytes | None = None  # the decompressed tar, for compressed archives
        self._spans: list[tuple[int, int]] = []
        try:
            if self.is_zip:
                with zipfile.ZipFile(self.path) as zf:
                    self.names = sorted(
                        n for n in zf.namelist() if n.startswith(self.prefix) and _is_image(n, extensions)
                    )
            else:
                self._index_tar(extensions)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot read image archive {self.path}: {e}") from e
        if not self.names:
            raise DataError(f"no images under '{self.prefix}' in archive {self.path}")
        if labeled:
            top = [n[len(self.prefix) :].split("/", 1) for n in self.names]
            if any(len(parts) < 2 for parts in top):
                raise DataError(f"labeled archive {self.path}: every image must sit in {self.prefix}<class>/")
            self.classes = sorted({parts[0] for parts in top})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[parts[0]] for parts in top]
        else:
            self.labels = [UNLABELED] * len(self.names)
        self._handle: tuple[int, Any] | None = None

    def _index_tar(self, extensions: tuple[str, ...]) -> None:
        opener = _decompressor(self.path)
        if opener is not None:
            # A compressed stream cannot seek: decompress the whole tar into memory once and read
            # members from there (much faster than tarfile's member-by-member streaming).
            with opener(self.path) as f:
                self._blob = f.read()
            fileobj: Any = io.BytesIO(self._blob)
        else:
            fileobj = open(self.path, "rb")  # noqa: SIM115
        with fileobj, tarfile.open(fileobj=fileobj, mode="r:") as tar:
            members = sorted(
                (
                    m
                    for m in tar.getmembers()
                    if m.isfile() and m.name.startswith(self.prefix) and _is_image(m.name, extensions)
                ),
                key=lambda m: m.name,
            )
        self.names = [m.name for m in members]
        self._spans = [(m.offset_data, m.size) for m in members]

    def __len__(self) -> int:
        return len(self.names)

    def _open(self) -> Any:
        """The archive opened once per process (workers are forked or spawned with no handle)."""
        if self._handle is None or self._handle[0] != os.getpid():
            handle = zipfile.ZipFile(self.path) if self.is_zip else open(self.path, "rb")  # noqa: SIM115
            self._handle = (os.getpid(), handle)
        return self._handle[1]

    def read(self, index: int) -> bytes:
        """The raw bytes of image ``index``."""
        if self.is_zip:
            return self._open().read(self.names[index])
        offset, size = self._spans[index]
        if self._blob is not None:
            return self._blob[offset : offset + size]
        f = self._open()
        f.seek(offset)
        return f.read(size)

    def name(self, index: int) -> str:
        return f"{self.path}:{self.names[index]}"

    def get(self, index: int) -> Sample:
        data = encoded(self.read(index))
        return Sample(data, self.labels[index], self.name(index))

    def fingerprint(self) -> str:
        stat = self.path.stat()
        key = f"{self.path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.prefix}\0{len(self)}\0{self.classes}"
        return hashlib.sha256(key.encode()).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None  # file handles do not cross process boundaries
        return state


def _decompressor(path: Path) -> Any:
    """``gzip.open``, ``bz2.open`` or ``lzma.open`` by the file's magic bytes; None for a plain tar."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open
    if magic.startswith(b"BZh"):
        return bz2.open
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open
    return None


class ArrayImages(ImageSource):
    """Decoded images held in memory.

    Args:
        images: (N, H, W, 3) or (N, 3, H, W) uint8 array or tensor.
        labels: N class indices (or -1).
        classes: class names, or None when unlabeled.
        name: shown in error messages.
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        labels: Sequence[int] | np.ndarray | Tensor,
        classes: list[str] | None,
        name: str,
    ) -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise DataError(
                f"{name}: expected (N, H, W, 3) or (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}"
            )
        if images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if len(self.labels) != len(self.images):
            raise DataError(f"{name}: {len(self.images)} images but {len(self.labels)} labels")
        self.classes = classes
        self.title = name

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"{self.title}[{index}]"

    def get(self, index: int) -> Sample:
        return Sample(self.images[index], int(self.labels[index]), self.name(index))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.title.encode())
        digest.update(self.images.numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


class SubsetImages(ImageSource):
    """Some images of another source, in the order of ``indices`` (a cap, a validation hold-out).

    Args:
        source: the full source.
        indices: (M,) indices into ``source``.
        why: what chose them (``max_train_images=2000, seed 0``); part of the fingerprint and of names.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int] | np.ndarray | Tensor, why: str) -> None:
        self.parent = source
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.classes = source.classes
        self.why = why
        labels = getattr(source, "labels", None)
        if labels is not None:
            self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.parent.name(int(self.indices[index]))

    def get(self, index: int) -> Sample:
        return self.parent.get(int(self.indices[index]))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.parent.fingerprint().encode())
        digest.update(self.why.encode())
        digest.update(self.indices.numpy().tobytes())
        return digest.hexdigest()
