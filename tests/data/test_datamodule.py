"""The DataModule: uint8 crops from workers, normalization on the device, skipped images reported."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

from selfsup.data.datamodule import ImageDataModule
from selfsup.data.decode import decode
from selfsup.data.sources import ArrayImages, FolderImages
from selfsup.data.synthetic import synthetic
from selfsup.data.transforms import KeyedAugmentation, normalize
from selfsup.errors import ConfigError, DataError
from tests.conftest import test_datamodule


def _module(**kwargs) -> ImageDataModule:
    defaults = dict(
        pretrain=partial(synthetic, 20, 40, seed=0),
        train=partial(synthetic, 20, 40, seed=1),
        image_size=24,
        batch_size=8,
    )
    return test_datamodule(**{**defaults, **kwargs})


@pytest.mark.parametrize("workers", [0, 1])
def test_train_batches_are_uint8_crops(workers: int) -> None:
    dm = _module(num_workers=workers)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 20 images, batch 8, last partial batch dropped
    assert batches[0]["image"].dtype == torch.uint8 and batches[0]["image"].shape == (8, 3, 24, 24)


def test_normalization_happens_after_transfer() -> None:
    dm = _module(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    batch = next(iter(dm.labeled_dataloader("train")))
    raw = batch["image"].clone()
    out = dm.on_after_batch_transfer(batch, 0)["image"]
    assert out.dtype == torch.float32
    expected = (raw.float() / 255 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 1.0]
    ).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_normalize_matches_torchvision() -> None:
    from torchvision.transforms.v2 import functional as F

    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    assert torch.allclose(
        normalize(images, mean, std), F.normalize(images.float() / 255, mean, std), atol=1e-5
    )


def test_eval_loader_is_ordered_and_centre_cropped() -> None:
    dm = _module(eval_crop_fraction=0.75)
    labels = torch.cat([b["label"] for b in dm.labeled_dataloader("train")])
    assert labels.tolist() == synthetic(20, 40, seed=1).labels.tolist()


def test_unlabeled_source_cannot_be_used_downstream() -> None:
    unlabeled = partial(ArrayImages, torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [-1] * 4, None, "unlabeled")
    with pytest.raises(DataError, match=r"data.train must be labeled"):
        _module(train=unlabeled).source("train")


def test_skipped_images_are_counted_once(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(
            encode_png(torch.zeros(3, 30, 30, dtype=torch.uint8)).numpy().tobytes()
        )
    (tmp_path / "bad.png").write_bytes(b"nope")
    dm = test_datamodule(pretrain=partial(FolderImages, tmp_path, labeled=False), image_size=16, batch_size=7)
    dm.setup("fit")
    for _ in range(2):  # two epochs see the bad file twice
        for batch in dm.train_dataloader():
            dm.on_after_batch_transfer(batch, 0)
    assert dm.bad_images == {str(tmp_path / "bad.png")}


def test_train_and_test_must_have_the_same_classes(tmp_path: Path) -> None:
    png = encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy().tobytes()
    for split, classes in (("train", ["cat", "dog", "frog"]), ("test", ["cat", "frog"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "0.png").write_bytes(png)
    dm = test_datamodule(
        train=partial(FolderImages, tmp_path / "train", labeled=True),
        test=partial(FolderImages, tmp_path / "test", labeled=True),
        image_size=8,
    )
    # Numbered per split, 'frog' would be label 2 in train and 1 in test.
    with pytest.raises(DataError, match=r"only in train: \['dog'\], only in test: \[\]"):
        dm.classes()
    same = _module(test=partial(synthetic, 8, 40, seed=2))
    assert same.classes() == same.source("train").classes


def test_padded_crop_option_reaches_the_training_loader() -> None:
    dm = _module(pretrain=partial(synthetic, 16, 32, seed=0), image_size=32, crop="padded", crop_padding=4)
    dm.setup("fit")
    assert dm.train_augmentation().crop == "padded"
    reference = KeyedAugmentation(32, crop="padded", crop_padding=4)
    batch = next(iter(dm.train_dataloader()))
    source = dm.source("pretrain")
    for image, index, key in zip(batch["image"], batch["index"], batch["key"], strict=True):
        sample = source.get(int(index))
        assert torch.equal(image, reference(decode(sample.data, sample.name), key))
    assert (batch["image"] == 0).any()  # the zero padding shows in some windows


def test_an_unknown_crop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.crop'"):
        _module(crop="center")
    with pytest.raises(ConfigError, match=r"data\.crop_padding"):
        _module(crop="padded", crop_padding=-1)


@pytest.mark.parametrize("experiment", ["rotnet_nin_paper", "rotnet_nin_official"])
def test_rotnet_nin_experiments_use_the_official_data_pipeline(make_cfg, experiment: str) -> None:
    # gidariss/FeatureLearningRotNet dataloader.py: mean [125.3, 123.0, 113.9] / 255, std
    # [63.0, 62.1, 66.7] / 255, RandomCrop(32, padding=4) and RandomHorizontalFlip on the train split.
    cfg = make_cfg([f"experiment={experiment}"])
    data = cfg.data
    assert list(data.mean) == pytest.approx([x / 255 for x in (125.3, 123.0, 113.9)], abs=1e-9)
    assert list(data.std) == pytest.approx([x / 255 for x in (63.0, 62.1, 66.7)], abs=1e-9)
    assert (data.crop, data.crop_padding, data.hflip, data.image_size, data.batch_size) == (
        "padded",
        4,
        True,
        32,
        128,
    )
    assert (cfg.encoder.num_blocks, cfg.encoder.avg_pool_block3, cfg.task.rotations) == (4, False, "all")
    assert cfg.optim.no_decay_bias_and_norm is False and cfg.optim.lr_scaling == "none"


def test_a_script_that_stops_mid_epoch_with_workers_exits(tmp_path: Path) -> None:
    """Workers ignore their first SIGTERM (preemption); at exit they must still end, not hang the process."""
    import subprocess
    import sys

    script = tmp_path / "stop_mid_epoch.py"
    script.write_text(
        "from functools import partial\n"
        "from selfsup.data.synthetic import synthetic\n"
        "from tests.conftest import test_datamodule\n"
        "dm = test_datamodule(pretrain=partial(synthetic, 64, 32, seed=0), batch_size=8, num_workers=1,\n"
        "                     persistent_workers=True)\n"
        "dm.setup('fit')\n"
        "batches = iter(dm.train_dataloader())\n"
        "next(batches)\n"
        "print('stopping with the loader still running', flush=True)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert done.returncode == 0 and "stopping" in done.stdout, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
