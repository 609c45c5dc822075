"""Decoding: 16-bit PNGs are images, every undecodable file is a bad image (named), never a crash."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data.decode import decode
from selfsup.data.sources import FolderImages
from selfsup.errors import UnreadableImageError
from tests.conftest import test_datamodule
from tests.data.images import image_folder, png16


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path: Path) -> None:
    gray = np.array([[0, 257, 65535], [1000, 30000, 65000]], dtype=np.uint16)
    rgb = np.stack([gray, 65535 - gray, gray // 2], axis=-1)
    for name, pixels in (("gray.png", np.stack([gray] * 3, axis=-1)), ("rgb.png", rgb)):
        path = png16(tmp_path / name, pixels if name == "rgb.png" else gray)
        image = decode(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), name)
        assert image.dtype == torch.uint8 and image.shape == (3, 2, 3)
        expected = torch.from_numpy(pixels.astype(np.int64) * 255 // 65535).permute(2, 0, 1)
        assert (image.long() - expected).abs().max() <= 1, name


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"not an image\n", "not an image"), (b"\xff\xd8\xff\xe0" + b"\0" * 40, "")],
)
def test_undecodable_bytes_raise_an_error_naming_the_file(content: bytes, reason: str) -> None:
    data = (
        torch.frombuffer(bytearray(content), dtype=torch.uint8)
        if content
        else torch.empty(0, dtype=torch.uint8)
    )
    with pytest.raises(UnreadableImageError, match=f"cannot decode image some/file.jpg: .*{reason}"):
        decode(data, "some/file.jpg")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_with_broken_files_loads_and_names_them(tmp_path: Path, workers: int) -> None:
    files = image_folder(tmp_path / "images")
    dm = test_datamodule(
        pretrain=partial(FolderImages, tmp_path / "images", labeled=False), batch_size=1, num_workers=workers
    )
    loaded = 0
    for batch in dm.train_dataloader():
        dm.prepare_batch(batch)
        loaded += len(batch["image"])
        assert batch["image"].dtype == torch.float32
    assert dm.bad_images == {str(p) for p in files["bad"]}
    assert loaded == 8  # 6 JPEGs and two 16-bit PNGs
