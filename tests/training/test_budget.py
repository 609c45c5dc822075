"""The budget estimate: which limit ends the run, what it covers, and the warning when it is short."""

from __future__ import annotations

import logging

import pytest
import torch

from selfsup.stages.pretrain import pretrain
from selfsup.training.budget import MeasuredNeed, plan, short_budget_warning
from tests.conftest import FAST

COMMON = dict(images_per_s=100.0, images_per_step=64, dataset_size=10_000, steps_per_epoch=156, steps_done=13)


def test_the_limit_that_binds_first_ends_the_run() -> None:
    by_steps = plan(**COMMON, max_steps=400, max_epochs=3, time_left_s=None)
    assert (by_steps.steps, by_steps.limit) == (400, "trainer.max_steps=400")
    assert by_steps.epochs == pytest.approx(400 * 64 / 10_000) and by_steps.seconds == pytest.approx(256.0)
    by_epochs = plan(**COMMON, max_steps=-1, max_epochs=2, time_left_s=None)
    assert (by_epochs.steps, by_epochs.limit) == (312, "trainer.max_epochs=2")
    by_time = plan(**COMMON, max_steps=-1, max_epochs=-1, time_left_s=64.0)  # 100 images/s = 1.5625 steps/s
    assert (by_time.steps, by_time.limit) == (13 + 100, "trainer.max_time")
    with pytest.raises(ValueError, match="no length"):
        plan(**COMMON, max_steps=-1, max_epochs=-1, time_left_s=None)


def test_a_budget_too_short_for_the_task_is_warned_about_before_it_is_spent(
    make_cfg, caplog: pytest.LogCaptureFixture
) -> None:
    # RotNet needed 1 epoch at 64 px to beat its random init; 16 steps of 8 of 512 images are 0.25.
    overrides = [
        *FAST, "data.image_size=64", "data.pretrain.num_images=512", "trainer.max_steps=16", "trainer.max_epochs=1"
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="selfsup.training.budget"):
        results = pretrain(make_cfg(overrides))
    budget = results["budget"]
    assert budget["steps"] == 16 and budget["limit"] == "trainer.max_steps=16"
    assert budget["epochs"] == pytest.approx(0.25) and budget["images_per_s"] > 0
    lines = [r for r in caplog.records if r.name == "selfsup.training.budget"]
    assert any("ends the run after 16 steps = 0.25 epochs of the 512" in r.getMessage() for r in lines)
    warnings = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fewer than the 1.00 that RotNet needed to beat" in warnings[0]
    assert "at 64 px" in warnings[0]


def test_a_budget_long_enough_is_not_warned_about(make_cfg, caplog: pytest.LogCaptureFixture) -> None:
    overrides = [
        *FAST, "data.image_size=64", "data.pretrain.num_images=32", "trainer.max_steps=16", "trainer.max_epochs=4"
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="selfsup.training.budget"):
        results = pretrain(make_cfg(overrides))
    assert results["budget"]["epochs"] == pytest.approx(4.0)  # 4 steps an epoch: the epochs bind
    assert not [
        r for r in caplog.records if r.name == "selfsup.training.budget" and r.levelno == logging.WARNING
    ]


def test_the_main_job_default_is_not_warned_about() -> None:
    """The default budget, 400 steps of 64 of the 10k embedded images, is RotNet's measured win."""
    from selfsup.tasks.rotnet import RotNet

    budget = plan(**{**COMMON, "dataset_size": 10_000}, max_steps=400, max_epochs=3, time_left_s=None)
    assert short_budget_warning(RotNet.measured_needs, "RotNet", 64, budget.epochs) is None


def test_a_size_where_the_task_never_beat_random_init_is_warned_about_whatever_the_budget() -> None:
    """At 32 px RotNet did not beat its random init within 2.56 epochs; the warning says what did."""
    from selfsup.tasks.rotnet import RotNet

    warning = short_budget_warning(RotNet.measured_needs, "RotNet", 32, 10.0)
    assert (
        warning is not None
        and "at 32 px RotNet did not beat its random initialization at every probed layer within 2.56"
        in warning
    )
    assert "at 64 px it did after 1.00 (data.image_size=64)" in warning and "covers 10.00 epochs" in warning
    assert short_budget_warning(RotNet.measured_needs, "RotNet", 96, 0.1) is None, "not measured: no claim"
    needs = (MeasuredNeed(64, 2.0, 2.0),)
    assert (
        short_budget_warning(needs, "X", 64, 1.0) is not None
        and short_budget_warning(needs, "X", 64, 2.0) is None
    )


def test_a_time_budget_stops_the_run_first(make_cfg) -> None:
    """The README's `trainer.max_time=...` beside the step and epoch limits: the clock ends the run."""
    overrides = [
        *FAST,
        "trainer.max_steps=100000",
        "trainer.max_epochs=10000",
        "trainer.max_time=00:00:00:04",
    ]
    results = pretrain(make_cfg(overrides))
    assert 0 < results["steps"] < 100000 and results["time_s"] < 60


def test_a_time_budget_alone_is_refused_while_a_schedule_needs_a_length(make_cfg) -> None:
    from selfsup.config import check_training
    from selfsup.errors import ConfigError

    alone = ["trainer.max_steps=-1", "trainer.max_epochs=-1", "trainer.max_time=00:01:00:00"]
    with pytest.raises(ConfigError, match=r"trainer\.max_time.*no length in steps.*max_steps"):
        check_training(make_cfg(alone))
    check_training(make_cfg([*alone, "~schedule"]))  # a constant rate needs no length


def test_a_measurement_applies_to_the_encoder_it_was_made_with() -> None:
    """RotNet's needs were measured with ResNet-18: neither a NIN nor a ResNet-50 at 32 px is warned
    about on their account; the encoders' own recorded configs decide."""
    from selfsup.encoders.nin import NINEncoder
    from selfsup.encoders.resnet import ResNetEncoder
    from selfsup.tasks.rotnet import RotNet
    from selfsup.training.budget import for_encoder

    def needs(encoder: torch.nn.Module) -> tuple[MeasuredNeed, ...]:
        return for_encoder(RotNet.measured_needs, type(encoder).__name__, encoder.config)

    assert short_budget_warning(needs(NINEncoder(num_blocks=4)), "RotNet", 32, 1.0) is None
    assert short_budget_warning(needs(ResNetEncoder(depth=50, cifar_stem=True)), "RotNet", 32, 1.0) is None
    resnet18 = needs(ResNetEncoder(depth=18, cifar_stem=True))
    assert resnet18 == RotNet.measured_needs
    assert short_budget_warning(resnet18, "RotNet", 32, 1.0) is not None
    assert for_encoder((MeasuredNeed(64, 1.0, 1.0),), "ViTEncoder"), "a measurement for any encoder applies"


def test_settings_without_their_encoder_class_are_refused() -> None:
    with pytest.raises(ValueError, match="names the encoder class"):
        MeasuredNeed(32, 1.0, 1.0, None, (("depth", 18),))
