"""data.decode_on_device: workers read bytes, the device decodes, crops and flips; same batches as the workers'."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from selfsup.data.device_decode import DeviceDecoder, EncodedImages, is_jpeg
from selfsup.data.sources import FolderImages, encoded
from selfsup.data.transforms import KeyedAugmentation
from selfsup.errors import ConfigError, UnreadableImageError
from tests.conftest import test_datamodule
from tests.data.images import image_folder, jpeg


def _folder(root: Path) -> dict[str, list[Path]]:
    """JPEGs of three sizes, 16-bit PNGs (decoded on the host), and files neither path can decode."""
    files = image_folder(root)
    files["good"] += [jpeg(root / f"big{i}.jpg", 10 + i, size=56 + 16 * i) for i in range(3)]
    fake = root / "fake.jpg"  # the JPEG marker, then nothing a decoder can read
    fake.write_bytes(bytes([0xFF, 0xD8, 0xFF, 0xE0]) + b"\x00" * 64)
    files["bad"].append(fake)
    return files


def _pair(root: Path, **kwargs):
    """The workers' path and the device path over ``root``; batches of 5 cover its 15 files exactly."""
    settings = dict(
        pretrain=partial(FolderImages, root, labeled=False), image_size=32, batch_size=5, **kwargs
    )
    return test_datamodule(**settings), test_datamodule(**settings, decode_on_device=True)


@pytest.mark.parametrize("crop", ["random_resized", "padded"])
def test_the_device_path_gives_the_workers_batches(tmp_path: Path, crop: str) -> None:
    """On the CPU the two paths decode with the same libjpeg: the same pixels, exactly, batch by batch."""
    files = _folder(tmp_path / "images")
    workers, device = _pair(tmp_path / "images", crop=crop, crop_padding=4)
    for dm in (workers, device):
        dm.setup("fit")
    seen = 0
    for ours, theirs in zip(device.train_dataloader(), workers.train_dataloader(), strict=True):
        assert "image" not in ours and isinstance(ours["encoded"], EncodedImages)
        ours, theirs = device.on_after_batch_transfer(ours, 0), workers.on_after_batch_transfer(theirs, 0)
        for name in ("index", "key"):
            assert torch.equal(ours[name], theirs[name])
        assert ours["bad_images"] == theirs["bad_images"]
        assert torch.equal(ours["image"], theirs["image"])
        seen += len(ours["index"])
    assert len(files["good"]) + len(files["bad"]) == 15
    assert seen == len(files["good"])
    assert device.bad_images == workers.bad_images == {str(p) for p in files["bad"]}


def _encoded(paths: list[Path], keys: list[int]) -> EncodedImages:
    return EncodedImages([encoded(p.read_bytes()) for p in paths], [str(p) for p in paths], keys)


def test_unreadable_files_are_skipped_and_named(tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    paths = [files["good"][0], files["bad"][1], files["good"][-1], files["bad"][-1], files["good"][6]]
    decoder = DeviceDecoder(KeyedAugmentation(32), "skip")
    images, kept, bad = decoder(_encoded(paths, [1, 2, 3, 4, 5]), torch.device("cpu"))
    assert kept == [0, 2, 4] and bad == [str(files["bad"][1]), str(files["bad"][-1])]
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    alone = decoder(_encoded([files["good"][-1]], [3]), torch.device("cpu"))[0]
    assert torch.equal(images[1], alone[0]), "an image's crop does not depend on its batch"


def test_unreadable_files_stop_the_run_when_configured(tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    decoder = DeviceDecoder(KeyedAugmentation(32), "error")
    with pytest.raises(UnreadableImageError, match=r"fake\.jpg"):
        decoder(_encoded([files["good"][0], files["bad"][-1]], [1, 2]), torch.device("cpu"))


def test_a_batch_of_only_unreadable_files_is_empty(tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    _, device = _pair(tmp_path / "images")
    batch = {
        "encoded": _encoded(files["bad"], list(range(len(files["bad"])))),
        "label": torch.full((len(files["bad"]),), -1),
        "index": torch.arange(len(files["bad"])),
        "key": torch.arange(len(files["bad"])),
        "bad_images": [],
    }
    out = device.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == (0, 3, 32, 32) and out["index"].numel() == 0
    assert len(out["bad_images"]) == len(files["bad"])


def test_jpeg_detection_reads_the_start_of_image_marker(tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    assert is_jpeg(encoded(files["good"][0].read_bytes()))
    assert not is_jpeg(encoded((tmp_path / "images" / "gray16.png").read_bytes()))
    assert not is_jpeg(encoded(b""))


def test_decoding_on_device_and_keeping_images_there_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"data\.decode_on_device"):
        test_datamodule(on_device=True, decode_on_device=True)


@pytest.mark.gpu
def test_nvjpeg_decodes_what_libjpeg_decodes(tmp_path: Path) -> None:
    """On a GPU: nvJPEG's pixels within a few uint8 steps of libjpeg's (IDCT rounding), bad files skipped."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    files = _folder(tmp_path / "images")
    paths = [*files["good"], *files["bad"]]
    decoder = DeviceDecoder(
        KeyedAugmentation(32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False), "skip"
    )
    on_gpu, kept, bad = decoder(_encoded(paths, list(range(len(paths)))), torch.device("cuda"))
    on_cpu, kept_cpu, bad_cpu = decoder(_encoded(paths, list(range(len(paths)))), torch.device("cpu"))
    assert kept == kept_cpu and bad == bad_cpu
    difference = (on_gpu.cpu().float() - on_cpu.float()).abs()
    assert difference.mean() < 1.0 and difference.max() <= 16


def test_pretraining_decodes_on_the_device_and_lists_the_bad_files(tmp_path: Path) -> None:
    """The real command on a folder with broken files: trains, and names every skipped file."""
    import json
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "selfsup-pretrain"
    if not cli.exists():
        pytest.skip("selfsup-pretrain is not installed in this environment")
    files = _folder(tmp_path / "images")
    run = tmp_path / "run"
    out = subprocess.run(
        [
            str(cli), "data=folder", f"data.path={tmp_path / 'images'}", "data.decode_on_device=true",
            "data.image_size=32", "data.batch_size=5", "data.num_workers=0", "encoder.cifar_stem=true",
            "trainer.max_epochs=1", "trainer.max_steps=3", "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 3 and metrics["bad_images"] == len(files["bad"])
    listed = set((run / "bad_images.txt").read_text().split())
    assert listed == {str(p) for p in files["bad"]}


def test_lightnings_batch_transfer_leaves_the_bytes_on_the_host(tmp_path: Path) -> None:
    """Lightning moves dataclasses' tensors too; decode_jpeg needs host bytes, so these must stay."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    files = _folder(tmp_path / "images")
    batch = {"encoded": _encoded(files["good"][:2], [1, 2]), "key": torch.tensor([1, 2])}
    moved = move_data_to_device(batch, torch.device("meta"))
    assert moved["key"].device.type == "meta", "the transfer ran"
    assert all(data.device.type == "cpu" for data in moved["encoded"].data)
