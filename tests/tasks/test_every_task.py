"""Every task in conf/task trains for a few steps and exports an encoder that reloads.

A new task is tested here the moment its yaml exists. Each task is tried with a small ResNet and a
small ViT on 64 px generated images; a task may refuse an encoder kind, but only with a ConfigError
that says why, and it must work with at least one of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.encoders import load
from selfsup.errors import ConfigError
from selfsup.stages.pretrain import pretrain
from tests.conftest import FAST, options

ENCODERS = {
    "resnet": ["encoder=resnet18", "encoder.cifar_stem=true"],
    "vit": ["encoder=vit_tiny", "encoder.patch_size=8", "encoder.depth=2"],
}


@pytest.mark.parametrize("task", options("task"))
def test_task_trains_and_exports(make_cfg, tmp_path: Path, task: str) -> None:
    worked = []
    for kind, encoder in ENCODERS.items():
        run_dir = tmp_path / kind
        cfg = make_cfg([f"task={task}", *encoder, *FAST, "data.image_size=64", f"paths.run_dir={run_dir}"])
        try:
            metrics = pretrain(cfg)
        except ConfigError as e:
            assert e.key and e.problem, "a refusal must name the key and the reason"
            continue
        assert metrics["steps"] == 2
        assert torch.isfinite(torch.tensor(metrics["loss"]))
        encoder_module = load(run_dir / "encoder")
        assert encoder_module(torch.zeros(2, 3, 64, 64)).shape == (2, encoder_module.out_dim)
        worked.append(kind)
    assert worked, f"task {task} trained with none of {list(ENCODERS)}"
