"""Shared fixtures: composing the package's Hydra configs as the command line would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from selfsup.data.datamodule import ImageDataModule

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small generated image sets, and a few steps with no progress bar: what end-to-end tests run.
FAST_DATA = [
    "data=synthetic",
    "data.pretrain.num_images=32",
    "data.train.num_images=64",
    "data.test.num_images=64",
    "data.batch_size=8",
]
FAST = [
    *FAST_DATA,
    "trainer.max_epochs=1",
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]


def test_datamodule(**kwargs: Any) -> ImageDataModule:
    """An :class:`ImageDataModule` for tests: no splits, 32 px, in-process loading, ImageNet statistics.

    No validation hold-out (``val_fraction=0``): ``train`` is the whole train source.

    The DataModule itself has no defaults for what the data yamls configure; tests override these.
    """
    settings: dict[str, Any] = dict(
        pretrain=None,
        train=None,
        test=None,
        image_size=32,
        batch_size=128,
        num_workers=0,
        crop_scale=(0.2, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        eval_crop_fraction=1.0,
        pin_memory=False,
        persistent_workers=False,
        path=None,
        seed=0,
        val_fraction=0.0,
        on_device_cache=None,
    )
    return ImageDataModule(**{**settings, **kwargs})


test_datamodule.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def options(group: str) -> list[str]:
    """Every option of a config group, from conf/<group>/*.yaml."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_in(folder: Path, overrides: Sequence[str] = (), config_name: str = "pretrain") -> DictConfig:
    """Compose ``config_name`` with overrides; the run directory and caches go under ``folder``."""
    with initialize_config_module("selfsup.conf", version_base="1.3"):
        return compose(
            config_name,
            overrides=[f"paths.run_dir={folder / 'run'}", f"paths.cache_dir={folder / 'cache'}", *overrides],
        )


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_in`` a test's temporary folder."""

    def make(overrides: Sequence[str] = (), config_name: str = "pretrain") -> DictConfig:
        return compose_in(tmp_path, overrides, config_name)

    return make


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    # Two threads keep the 2-core CI machine responsive and timings comparable.
    torch.set_num_threads(min(2, torch.get_num_threads()))
