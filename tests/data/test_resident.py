"""data.on_device: the images decoded once and augmented in batch, with the decoding path's batches."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from selfsup.data.resident import load_resident
from selfsup.data.sources import FolderImages
from selfsup.data.synthetic import synthetic
from selfsup.errors import ConfigError
from tests.conftest import FAST, test_datamodule
from tests.data.images import image_folder, jpeg


def _pair(**kwargs):
    settings = dict(
        pretrain=partial(synthetic, 40, 40, seed=0), image_size=48, batch_size=8, crop_scale=(0.35, 1.0)
    )
    return test_datamodule(**settings, **kwargs), test_datamodule(**settings, on_device=True, **kwargs)


def test_the_on_device_path_draws_the_decoding_paths_batches() -> None:
    """Same sampler: the same images in the same order with the same keys; the same crops to rounding."""
    workers, resident = _pair()
    for dm in (workers, resident):
        dm.setup("fit")
    for ours, theirs in zip(resident.train_dataloader(), workers.train_dataloader(), strict=True):
        assert torch.equal(ours["index"], theirs["index"]) and torch.equal(ours["key"], theirs["key"])
        ours = resident.on_after_batch_transfer(ours, 0)
        theirs = workers.on_after_batch_transfer(theirs, 0)
        assert ours["image"].shape == theirs["image"].shape == (8, 3, 48, 48)
        std = torch.tensor(resident.std).view(1, 3, 1, 1) * 255  # back to uint8 steps
        inner = ((ours["image"] - theirs["image"]) * std)[..., 4:-4, 4:-4].abs()
        assert inner.max() <= 1.001, "40 px images enlarged to 48 px: the same pixels inside the boxes"


def test_resume_mid_epoch_continues_the_same_order() -> None:
    _, resident = _pair()
    resident.setup("fit")
    full = [b["index"].tolist() for b in resident.train_dataloader()]
    loader = resident.train_dataloader()
    loader.load_state_dict({"epoch": 0, "samples_done": 2 * 8})
    assert [b["index"].tolist() for b in loader] == full[2:]


def test_decoded_once_and_cached_per_size(tmp_path: Path) -> None:
    source = synthetic(12, 40, seed=0)
    first = load_resident(source, None, tmp_path, 1.0, "skip")
    assert first.images.shape == (12, 3, 40, 40) and len(list(tmp_path.iterdir())) == 1
    again = load_resident(source, None, tmp_path, 1.0, "skip")
    assert torch.equal(again.images, first.images)
    smaller = load_resident(source, 32, tmp_path, 1.0, "skip")
    assert smaller.images.shape == (12, 3, 32, 32) and len(list(tmp_path.iterdir())) == 2
    assert torch.equal(first.gather(torch.tensor([3, 1])), first.images[[3, 1]])


def test_too_large_or_mixed_sizes_are_one_config_error(tmp_path: Path) -> None:
    source = synthetic(12, 40, seed=0)
    with pytest.raises(ConfigError, match=r"'data.on_device'.*more than data.on_device_max_gib=1e-06"):
        load_resident(source, None, None, 1e-6, "skip")
    folder = tmp_path / "mixed"
    folder.mkdir()
    jpeg(folder / "a.jpg", seed=0, size=40)
    jpeg(folder / "b.jpg", seed=1, size=24)
    with pytest.raises(ConfigError, match=r"'data.on_device_size'.*b.jpg is 24x24 px, not 40x40"):
        load_resident(FolderImages(folder, labeled=False), None, None, 1.0, "skip")
    both = load_resident(FolderImages(folder, labeled=False), 32, None, 1.0, "skip")
    assert both.images.shape == (2, 3, 32, 32)


def test_unreadable_images_are_skipped_and_reported(tmp_path: Path) -> None:
    files = image_folder(tmp_path / "images", good=4)  # and two 16-bit PNGs, also good
    dm = test_datamodule(
        pretrain=partial(FolderImages, tmp_path / "images", labeled=False), image_size=32, batch_size=2,
        on_device=True, on_device_size=40,
    )  # fmt: skip
    assert len(dm.resident()) == len(files["good"]) == 6
    assert dm.bad_images == {str(p) for p in files["bad"]}


def test_pretraining_on_device_trains_and_exports(make_cfg, tmp_path: Path) -> None:
    from selfsup.encoders import load
    from selfsup.run_dir import RunDir
    from selfsup.stages.pretrain import pretrain

    cfg = make_cfg([*FAST, "data.on_device=true", "encoder.cifar_stem=true"])
    metrics = pretrain(cfg)
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert load(RunDir.from_config(cfg).encoder) is not None
    assert list((tmp_path / "cache" / "resident").glob("*.npz")), "the decoded copy is cached"


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_gpu
def test_the_batched_augmentation_on_the_gpu_is_the_cpus() -> None:
    from selfsup.data.device_augment import BatchAugmentation, crop_boxes
    from selfsup.training.randomness import random_keys

    keys = random_keys(256, generator=torch.Generator().manual_seed(0))
    images = torch.randint(
        0, 256, (256, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(
        crop_boxes(keys.cuda(), 40, 40, (0.2, 1.0), (3 / 4, 4 / 3)).cpu(),
        crop_boxes(keys, 40, 40, (0.2, 1.0), (3 / 4, 4 / 3)),
    )
    augment = BatchAugmentation(48, (0.2, 1.0))
    on_gpu = augment(images.cuda(), keys.cuda()).cpu().float()
    assert (on_gpu - augment(images, keys).float()).abs().max() <= 1.0


@pytest.mark.gpu
@needs_gpu
def test_pretraining_on_device_on_a_gpu(make_cfg) -> None:
    from selfsup.stages.pretrain import pretrain

    metrics = pretrain(make_cfg([*FAST, "data.on_device=true", "trainer=gpu", "encoder.cifar_stem=true"]))
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
