"""Image sources, the dataset wrapper, base augmentations and the DataModule."""

from selfsup.data.datamodule import ImageDataModule
from selfsup.data.dataset import ImageDataset, collate
from selfsup.data.sources import ArchiveImages, ArrayImages, FolderImages, ImageSource

__all__ = [
    "ArchiveImages",
    "ArrayImages",
    "FolderImages",
    "ImageDataModule",
    "ImageDataset",
    "ImageSource",
    "collate",
]
