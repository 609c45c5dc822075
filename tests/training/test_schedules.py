"""Schedules, the derived learning rate and the one weight-decay rule."""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise
from types import SimpleNamespace
from unittest.mock import PropertyMock, patch

import pytest
import torch
from omegaconf import OmegaConf

from selfsup.data.sources import ArrayImages
from selfsup.encoders import ResNetEncoder, ViTEncoder
from selfsup.eval.finetune import stage_param_groups
from selfsup.stages.components import build_encoder, build_task
from selfsup.tasks.mae import MAE
from selfsup.tasks.rotnet import RotNet
from selfsup.tasks.simmim import SimMIM
from selfsup.training.optim import build_optimizer, derived_lr, no_weight_decay_ids, param_groups
from selfsup.training.schedules import (
    constant,
    lightning_optimizers,
    warmup_cosine,
    warmup_step,
    warmup_steps_of,
)
from tests.conftest import CONF, test_datamodule


def _lrs(make, total: int = 100, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make(optimizer, total_steps=total, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_cosine() -> None:
    lrs = _lrs(warmup_cosine, warmup_fraction=0.1, final_lr_fraction=0.0)
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)
    assert lrs[10 + 45] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in pairwise(lrs[10:]))
    assert lrs[-1] < 0.01


def test_step_schedule_drops_at_milestones() -> None:
    lrs = _lrs(warmup_step, milestones=(0.5, 0.75), gamma=0.1)
    assert lrs[49] == pytest.approx(2.0) and lrs[50] == pytest.approx(0.2) and lrs[75] == pytest.approx(0.02)


def test_constant_with_warmup() -> None:
    lrs = _lrs(constant, warmup_fraction=0.04)
    assert lrs[0] == pytest.approx(0.5) and lrs[3:] == [pytest.approx(2.0)] * 97


def test_derived_lr_rules() -> None:
    assert derived_lr(1.5e-4, "linear", 4096) == pytest.approx(1.5e-4 * 16)
    assert derived_lr(1e-3, "sqrt", 1024) == pytest.approx(2e-3)
    assert derived_lr(1e-3, "none", 1024) == 1e-3
    with pytest.raises(ValueError, match="lr_scaling"):
        derived_lr(1e-3, "cubic", 1)


def test_biases_and_norms_are_not_decayed() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups([net], weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
    optimizer = build_optimizer(torch.optim.AdamW, [net], lr=0.01, weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_no_warmup_is_the_probes_cosine_from_lr_to_zero() -> None:
    lrs = _lrs(warmup_cosine, total=50, warmup_fraction=0.0)
    assert lrs == [2.0 * (0.5 * (1 + math.cos(math.pi * s / 50))) for s in range(50)]  # exactly


def test_a_positive_warmup_fraction_warms_up_at_least_one_step() -> None:
    assert (
        warmup_steps_of(0.0, 100) == 0
        and warmup_steps_of(0.001, 100) == 1
        and warmup_steps_of(0.05, 400) == 20
    )


def test_lightning_optimizers_steps_the_scheduler_every_step() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = constant(optimizer, total_steps=10)
    assert lightning_optimizers(optimizer) is optimizer
    assert lightning_optimizers(optimizer, scheduler) == {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }


class _WithToken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.proj = torch.nn.Linear(4, 4)

    def no_weight_decay(self) -> set[str]:
        return {"token"}


def test_no_weight_decay_names_and_1d_parameters_are_exempt() -> None:
    net = torch.nn.Sequential(_WithToken(), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups([net], weight_decay=0.1)
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert {tuple(p.shape) for p in no_decay["params"]} == {(1, 1, 4), (4,)}
    (everything,) = param_groups([net], weight_decay=0.1, no_decay_bias_and_norm=False)
    assert len(everything["params"]) == len(list(net.parameters()))


def test_a_misnamed_exemption_is_an_error() -> None:
    module = _WithToken()
    module.no_weight_decay = lambda: {"tokn"}  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="names 'tokn'"):
        no_weight_decay_ids([module])


def test_pretraining_and_fine_tuning_split_a_vit_the_same_way() -> None:
    vit = ViTEncoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2, pos_embed="learned")
    _, no_decay = param_groups([vit], weight_decay=0.05)
    pretraining = {id(p) for p in no_decay["params"]}
    assert id(vit.class_token) in pretraining and id(vit.pos_embedding) in pretraining
    fine_tuning = {
        id(p)
        for g in stage_param_groups(vit, 1e-3, weight_decay=0.05)
        if g["weight_decay"] == 0
        for p in g["params"]
    }
    assert fine_tuning == pretraining


def test_mae_and_simmim_mask_tokens_are_not_decayed() -> None:
    vit = ViTEncoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2)
    mae = MAE(vit, decoder_width=16, decoder_depth=1, decoder_heads=2, reconstructions=None)
    _, no_decay = param_groups([mae.encoder, *mae.heads()], weight_decay=0.05)
    assert id(mae.decoder.mask_token) in {id(p) for p in no_decay["params"]}
    simmim = SimMIM(ResNetEncoder(18, cifar_stem=True), image_size=16, reconstructions=None)
    _, no_decay = param_groups([simmim.encoder, *simmim.heads()], weight_decay=0.05)
    assert id(simmim.fill.value) in {id(p) for p in no_decay["params"]}


def test_a_task_without_optim_settings_uses_the_shipped_adamw() -> None:
    task = RotNet(ResNetEncoder(18, cifar_stem=True))
    shipped = OmegaConf.load(CONF / "optim" / "adamw.yaml")
    assert (task.optim.lr, task.optim.weight_decay, task.optim.lr_scaling) == (
        shipped.lr,
        shipped.weight_decay,
        shipped.lr_scaling,
    )
    assert task.optim.optimizer.func is torch.optim.AdamW


@pytest.mark.parametrize(
    ("experiment", "epochs", "milestone_epochs"),
    [("rotnet_nin_paper", 100, [30, 60, 80]), ("rotnet_nin_official", 200, [60, 120, 160])],
)
def test_rotnet_nin_rates_drop_on_the_papers_epochs(
    make_cfg, experiment: str, epochs: int, milestone_epochs: list[int]
) -> None:
    cfg = make_cfg([f"experiment={experiment}"])
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.max_steps == -1
    # 50,000 CIFAR-10 images at batch 128: the pretraining sampler drops the last partial batch, so an
    # epoch is 390 steps (the official loader keeps it: 391) and every milestone is an epoch boundary.
    cifar = partial(ArrayImages, torch.zeros(50_000, 3, 1, 1, dtype=torch.uint8), [-1] * 50_000, None, "c")
    dm = test_datamodule(pretrain=cifar, batch_size=cfg.data.batch_size)
    dm.setup("fit")
    steps_per_epoch = len(dm.train_dataloader())
    assert steps_per_epoch == 390
    task = build_task(cfg, build_encoder(cfg))
    trainer = SimpleNamespace(
        datamodule=dm, world_size=1, accumulate_grad_batches=1, estimated_stepping_batches=epochs * 390
    )
    with patch.object(type(task), "trainer", new_callable=PropertyMock, return_value=trainer):
        configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and task.lr == 0.1  # no scaling: 128 x 4 rotations
    assert all(
        g["weight_decay"] == 5e-4 and g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups
    )
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(task.parameters()))
    factor = scheduler.lr_lambdas[0]
    drops = [step for step in range(1, epochs * 390) if factor(step) != factor(step - 1)]
    assert drops == [e * steps_per_epoch for e in milestone_epochs]
    assert [factor(s) for s in [0, *drops]] == pytest.approx([1.0, 0.2, 0.04, 0.008])
