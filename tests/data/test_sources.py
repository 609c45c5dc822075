"""Image sources: folders at any depth, archives, torchvision sets, synthetic; the bad-image policy."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from selfsup.data.dataset import BadImage, ImageDataset, collate
from selfsup.data.embedded import archive_path, build_archive, embedded_cifar10
from selfsup.data.sources import ArchiveImages, FolderImages
from selfsup.data.synthetic import synthetic
from selfsup.data.torchvision_sets import cifar10, stl10
from selfsup.errors import DataError, UnreadableImageError


def _image(seed: int, size: int = 12) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_unlabeled_folder_finds_images_at_any_depth(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", encode_png(_image(0)).numpy().tobytes())
    _write(tmp_path / "x" / "y" / "b.JPG", encode_jpeg(_image(1)).numpy().tobytes())
    _write(tmp_path / "x" / "notes.txt", b"not an image")
    _write(tmp_path / "x" / ".hidden.png", b"")
    source = FolderImages(tmp_path, labeled=False)
    assert [Path(f).name for f in source.files] == ["a.png", "b.JPG"]
    assert not source.labeled
    sample = source.get(0)
    assert sample.label == -1
    dataset = ImageDataset(source, None)
    assert torch.equal(dataset[0]["image"], _image(0))  # png is lossless


def test_labeled_folder_uses_class_subfolders(tmp_path: Path) -> None:
    for cls in ("dog", "cat"):
        for i in range(2):
            _write(tmp_path / cls / "deeper" / f"{i}.png", encode_png(_image(i)).numpy().tobytes())
    source = FolderImages(tmp_path, labeled=True)
    assert source.classes == ["cat", "dog"]
    assert [source.get(i).label for i in range(4)] == [0, 0, 1, 1]


def test_missing_or_empty_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere does not exist"):
        FolderImages(tmp_path / "nowhere", labeled=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images .* found under .*empty"):
        FolderImages(tmp_path / "empty", labeled=False)


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_archives_read_in_place(tmp_path: Path, kind: str) -> None:
    files = {
        f"train/{c}/{i}.png": encode_png(_image(i + 10 * j)).numpy().tobytes()
        for j, c in enumerate("ab")
        for i in range(3)
    }
    path = tmp_path / f"images.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = ArchiveImages(path, prefix="train", labeled=True)
    assert source.classes == ["a", "b"] and len(source) == 6
    dataset = ImageDataset(source, None)
    assert torch.equal(dataset[4]["image"], _image(11))
    assert dataset[4]["label"] == 1
    # the source pickles for worker processes without its open file handle
    clone = pickle.loads(pickle.dumps(source))
    assert torch.equal(ImageDataset(clone, None)[0]["image"], _image(0))


def test_corrupt_image_is_skipped_and_named(tmp_path: Path) -> None:
    _write(tmp_path / "good.png", encode_png(_image(0)).numpy().tobytes())
    _write(tmp_path / "broken.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg")
    dataset = ImageDataset(FolderImages(tmp_path, labeled=False), None, on_bad_image="skip")
    items = [dataset[i] for i in range(len(dataset))]
    assert isinstance(items[0], BadImage) and items[0].name.endswith("broken.jpg")
    batch = collate(items)
    assert batch["image"].shape[0] == 1
    assert batch["bad_images"] == [str(tmp_path / "broken.jpg")]


def test_corrupt_image_stops_the_run_when_asked(tmp_path: Path) -> None:
    _write(tmp_path / "broken.png", b"garbage")
    dataset = ImageDataset(FolderImages(tmp_path, labeled=False), None, on_bad_image="error")
    with pytest.raises(UnreadableImageError, match=r"cannot decode image .*broken.png"):
        dataset[0]


def test_a_batch_of_only_bad_images_is_empty_not_an_error() -> None:
    batch = collate([BadImage("a"), BadImage("b")])
    assert batch["image"].shape[0] == 0 and batch["bad_images"] == ["a", "b"]


def test_grayscale_rgba_and_webp_images_become_rgb(tmp_path: Path) -> None:
    _write(tmp_path / "gray.png", encode_png(_image(0)[:1]).numpy().tobytes())
    from PIL import Image

    Image.new("RGBA", (12, 12), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    Image.new("L", (12, 12), 7).save(tmp_path / "gray.webp")
    dataset = ImageDataset(FolderImages(tmp_path, labeled=False), None)
    assert len(dataset) == 3
    assert all(dataset[i]["image"].shape == (3, 12, 12) for i in range(3))


def _fake_cifar10(root: Path) -> np.ndarray:
    """CIFAR-10's python pickle layout, written from random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 3072), dtype=np.uint8)
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": list(range(10)) * 2}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return pixels


def test_cifar_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = _fake_cifar10(tmp_path)
    from torchvision.datasets import cifar

    # The files are in the official layout but not the official bytes, so skip the md5 checks.
    monkeypatch.setattr(cifar, "check_integrity", lambda *args: True)
    source = cifar10(tmp_path, split="test", download=False)
    assert len(source) == 20 and source.classes == [f"c{i}" for i in range(10)]
    image = ImageDataset(source, None)[3]["image"]
    assert torch.equal(image, torch.from_numpy(pixels[3].reshape(3, 32, 32)))


def test_missing_torchvision_datasets_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar10 not found under .*cifar-10-batches-py.*download=true"):
        cifar10(tmp_path, split="train", download=False)
    with pytest.raises(DataError, match=r"stl10 not found under .*stl10_binary"):
        stl10(tmp_path, split="unlabeled", download=False)


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, b, c = synthetic(16, 8, 4, seed=0), synthetic(16, 8, 4, seed=0), synthetic(16, 8, 4, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [4, 4, 4, 4]
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_embedded_default_is_balanced_real_cifar10() -> None:
    train, test = embedded_cifar10("train", labeled=True), embedded_cifar10("test", labeled=True)
    assert train.classes == test.classes and len(train.classes) == 10
    assert len(set(train.labels)) == 10 and len(train) % 10 == 0
    assert np.bincount(train.labels).min() == np.bincount(train.labels).max()
    assert ImageDataset(test, None)[0]["image"].shape == (3, 32, 32)
    assert archive_path().stat().st_size < 10e6


def test_build_archive_takes_the_first_images_of_each_class(tmp_path: Path) -> None:
    source = tmp_path / "src.tar.gz"
    with tarfile.open(source, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                for i in range(3):
                    data = encode_jpeg(_image(i)).numpy().tobytes()
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "subset.tar.gz"
    assert build_archive(source, out, {"train": 2, "test": 1}) == {"test": 2, "train": 4}
    first = out.read_bytes()
    build_archive(source, out, {"train": 2, "test": 1})
    assert out.read_bytes() == first, "the archive's bytes are reproducible"
    names = ArchiveImages(out, "train", labeled=True).names
    assert names == ["train/a/0000.jpg", "train/a/0001.jpg", "train/b/0000.jpg", "train/b/0001.jpg"]


def test_a_folder_source_refuses_an_empty_path_or_a_file(tmp_path: Path) -> None:
    from selfsup.data.sources import FolderImages
    from selfsup.errors import DataError

    with pytest.raises(DataError, match="path is empty"):
        FolderImages("", labeled=False)
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        FolderImages(tmp_path / "a.jpg", labeled=False)


def test_a_zero_byte_file_is_an_empty_sample_not_a_crash(tmp_path: Path) -> None:
    from selfsup.data.sources import FolderImages

    (tmp_path / "a.jpg").write_bytes(b"")
    sample = FolderImages(tmp_path, labeled=False).get(0)
    assert sample.data.numel() == 0 and sample.name.endswith("a.jpg")
