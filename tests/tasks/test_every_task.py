"""Every task in conf/task trains for a few steps and exports an encoder that reloads.

A new task is tested here the moment its yaml exists. Each task is tried with a small ResNet and a
small ViT and the Network-in-Network on 64 px generated images. The pairs a task refuses are declared in ``REFUSALS``, with the
config key and the reason the refusal must give; any other refusal fails, and so does a declared
refusal that does not happen. Every trainable parameter of every task gets a finite gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.encoders import load
from selfsup.errors import ConfigError
from selfsup.stages.components import build_pretraining
from selfsup.stages.pretrain import pretrain
from tests.conftest import FAST, options

ENCODERS = {
    "resnet": ["encoder=resnet18", "encoder.cifar_stem=true"],
    "vit": ["encoder=vit_tiny", "encoder.patch_size=8", "encoder.depth=2"],
    "nin": ["encoder=nin"],
}
IMAGE_SIZE = 64

# (task, encoder kind) -> (config key named, words of the reason).
REFUSALS = {
    # 64 px images give 21 px cells and 17 px tiles, not a multiple of the ViT's 8 px patches.
    ("jigsaw", "vit"): ("data.image_size", "Jigsaw feeds its encoder 17 px inputs"),
    ("mae", "resnet"): ("task", "needs a ViT encoder"),
    ("mae", "nin"): ("task", "needs a ViT encoder"),
}
CASES = [(task, kind) for task in options("task") for kind in ENCODERS]
WORKING = [case for case in CASES if case not in REFUSALS]


def _overrides(task: str, kind: str) -> list[str]:
    return [f"task={task}", *ENCODERS[kind], *FAST, f"data.image_size={IMAGE_SIZE}"]


@pytest.mark.parametrize(("task", "kind"), CASES)
def test_task_trains_and_exports_or_refuses_as_declared(
    make_cfg, tmp_path: Path, task: str, kind: str
) -> None:
    run_dir = tmp_path / kind
    cfg = make_cfg([*_overrides(task, kind), f"paths.run_dir={run_dir}"])
    if (task, kind) in REFUSALS:
        key, reason = REFUSALS[task, kind]
        with pytest.raises(ConfigError) as refusal:
            pretrain(cfg)
        assert refusal.value.key == key and reason in refusal.value.problem, str(refusal.value)
        return
    metrics = pretrain(cfg)  # an undeclared refusal (ConfigError) fails here
    assert metrics["steps"] == 2
    for accuracy, level in metrics["chance"].items():  # each chance level belongs to a logged accuracy
        assert accuracy in metrics and 0 < level < 1, (accuracy, metrics)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    encoder = load(run_dir / "encoder")
    assert encoder(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, encoder.out_dim)


def test_every_task_works_with_some_encoder_and_refusals_name_real_pairs() -> None:
    assert set(REFUSALS) <= set(CASES), "a declared refusal names a task or encoder that does not exist"
    for task in options("task"):
        assert any(t == task for t, _ in WORKING), f"task {task} works with none of {list(ENCODERS)}"


@pytest.mark.parametrize(("task", "kind"), WORKING)
def test_every_trainable_parameter_gets_a_finite_gradient(make_cfg, task: str, kind: str) -> None:
    """timm's check: one backward of the pretext loss reaches every trainable parameter."""
    cfg = make_cfg(_overrides(task, kind))
    module = build_pretraining(cfg).task.train()
    module.pretext_step(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)).loss.backward()
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    assert trainable
    missing = [name for name, p in trainable if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    broken = [name for name, p in trainable if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradients in {broken}"
