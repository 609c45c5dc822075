"""Shared fixtures: composing the package's Hydra configs as the command line would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

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
