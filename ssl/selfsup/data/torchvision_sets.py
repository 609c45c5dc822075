"""CIFAR-10, CIFAR-100 and STL-10 through torchvision's own dataset classes.

torchvision reads the official files (and downloads them when ``download=True``); we take its decoded
arrays as they are. Nothing is downloaded unless asked, and a missing dataset gets an error that says
which files to put where.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision import datasets

from selfsup.data.sources import UNLABELED, ArrayImages
from selfsup.errors import DataError

_CIFAR = {
    "cifar10": (
        datasets.CIFAR10,
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": (
        datasets.CIFAR100,
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}
_STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")


def _not_found(name: str, root: Path, folder: str, url: str) -> DataError:
    return DataError(
        f"{name} not found under {root}: expected the folder {root / folder} from the official archive "
        f"({url}). Extract it there, or set download=true (data.download=true) on a machine with internet."
    )


def cifar(
    root: str | os.PathLike[str], split: str = "train", download: bool = False, name: str = "cifar10"
) -> ArrayImages:
    """CIFAR-10 or CIFAR-100 (``name``), ``split`` ``train`` (50k) or ``test`` (10k), 32x32 px."""
    if name not in _CIFAR:
        raise DataError(f"unknown CIFAR variant {name!r}; choose one of {sorted(_CIFAR)}")
    if split not in ("train", "test"):
        raise DataError(f"{name} split must be 'train' or 'test', got {split!r}")
    cls, folder, url = _CIFAR[name]
    root = Path(root).expanduser()
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
        raise _not_found(name, root, folder, url) from e
    return ArrayImages(ds.data, ds.targets, list(ds.classes), f"{name}:{root}:{split}")


def cifar10(root: str | os.PathLike[str], split: str, download: bool) -> ArrayImages:
    """CIFAR-10 (Krizhevsky 2009) from torchvision."""
    return cifar(root, split, download, name="cifar10")


def cifar100(root: str | os.PathLike[str], split: str, download: bool) -> ArrayImages:
    """CIFAR-100 (Krizhevsky 2009) from torchvision."""
    return cifar(root, split, download, name="cifar100")


def stl10(root: str | os.PathLike[str], split: str, download: bool) -> ArrayImages:
    """STL-10 (Coates et al. 2011), 96x96 px: ``train`` 5k, ``test`` 8k, ``unlabeled`` 100k."""
    if split not in _STL10_SPLITS:
        raise DataError(f"stl10 split must be one of {_STL10_SPLITS}, got {split!r}")
    root = Path(root).expanduser()
    try:
        ds = datasets.STL10(str(root), split=split, download=download)
    except RuntimeError as e:
        raise _not_found("stl10", root, "stl10_binary", datasets.STL10.url) from e
    labeled = split in ("train", "test")
    labels = ds.labels if labeled else [UNLABELED] * len(ds.data)
    return ArrayImages(ds.data, labels, list(ds.classes) if labeled else None, f"stl10:{root}:{split}")
