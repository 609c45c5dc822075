"""Fine-tuning: frozen stages stay bit-identical (BatchNorm statistics included), per-stage learning rates."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from selfsup.data.synthetic import synthetic
from selfsup.encoders import Encoder, ResNetEncoder, ViTEncoder
from selfsup.eval.finetune import FineTuner, LabeledSplits, frozen_stages, stage_param_groups
from tests.conftest import test_datamodule


def finetuner(encoder: Encoder, *args: Any, **kwargs: Any) -> FineTuner:
    """A FineTuner with AdamW and a constant rate (the stage passes conf/eval/finetune.yaml's)."""
    return FineTuner(encoder, *args, optimizer=torch.optim.AdamW, schedule=None, **kwargs)


RESNET_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


def _resnet() -> ResNetEncoder:
    return ResNetEncoder(depth=18, cifar_stem=True)


def _vit(depth: int = 3) -> ViTEncoder:
    return ViTEncoder(image_size=16, patch_size=4, width=32, depth=depth, num_heads=2, pos_embed="learned")


def _stage_tensors(encoder: Encoder) -> dict[str, dict[str, Tensor]]:
    """A copy of every parameter and buffer (BatchNorm statistics included), by stage."""
    out: dict[str, dict[str, Tensor]] = {}
    for name, items in encoder.stage_modules():
        tensors: dict[str, Tensor] = {}
        for i, item in enumerate(items):
            state = {"": item} if isinstance(item, nn.Parameter) else item.state_dict()
            tensors.update({f"{i}.{key}": t.detach().clone() for key, t in state.items()})
        out[name] = tensors
    return out


class _ModeRecorder(pl.Callback):
    """Records, at every training step, whether each stage's modules are in train mode."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.modes.append(
            {
                name: all(m.training for item in items if isinstance(item, nn.Module) for m in item.modules())
                for name, items in pl_module.encoder.stage_modules()
            }
        )


def _fit(model: FineTuner, image_size: int, epochs: int = 2, steps_per_epoch: int = 2) -> _ModeRecorder:
    data = test_datamodule(
        train=partial(synthetic, num_images=32, image_size=image_size, num_classes=4, seed=1),
        test=partial(synthetic, num_images=16, image_size=image_size, num_classes=4, seed=2),
        image_size=image_size,
        batch_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    recorder = _ModeRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,  # more than one: Lightning's loops switch modes between epochs
        limit_train_batches=steps_per_epoch,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=LabeledSplits(data))
    assert trainer.global_step == epochs * steps_per_epoch
    return recorder


@pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode")
@pytest.mark.parametrize(
    ("make_encoder", "freeze_until", "image_size"),
    [(_resnet, "stage2", 16), (_vit, "block1", 16)],
    ids=["resnet18-stage2", "vit-block1"],
)
def test_frozen_stages_are_unchanged_and_the_others_train(
    make_encoder, freeze_until: str, image_size: int
) -> None:
    encoder = make_encoder()
    model = finetuner(encoder, num_classes=4, freeze_until=freeze_until, encoder_lr=1e-2, head_lr=1e-2)
    frozen = frozen_stages(encoder.stage_names, freeze_until)
    before = _stage_tensors(encoder)
    head_before = model.head.weight.detach().clone()
    recorder = _fit(model, image_size)
    after = _stage_tensors(encoder)
    for stage in encoder.stage_names:
        for key, old in before[stage].items():
            if stage in frozen:  # weights and BatchNorm statistics bit-identical
                assert torch.equal(old, after[stage][key]), f"frozen {stage} {key} changed"
            else:  # weights, BatchNorm statistics and counters all moved
                assert not torch.equal(old, after[stage][key]), f"trainable {stage} {key} did not change"
    assert not torch.equal(head_before, model.head.weight)
    # At every step of both epochs, frozen stages were in eval mode and the others in train mode.
    assert recorder.modes == [{stage: stage not in frozen for stage in encoder.stage_names}] * 4


def test_frozen_stages_names_the_prefix_up_to_freeze_until() -> None:
    assert frozen_stages(RESNET_STAGES, None) == ()
    assert frozen_stages(RESNET_STAGES, "stem") == ("stem",)
    assert frozen_stages(RESNET_STAGES, "stage2") == ("stem", "stage1", "stage2")
    assert frozen_stages(RESNET_STAGES, "stage4") == RESNET_STAGES
    with pytest.raises(ValueError, match=r"unknown stage 'block3'.*\['stem', 'stage1'"):
        frozen_stages(RESNET_STAGES, "block3")


def test_train_mode_never_reaches_frozen_stages() -> None:
    model = finetuner(_resnet(), num_classes=3, freeze_until="stage1")
    model.eval().train()
    assert not any(m.training for m in [*model.encoder.stem.modules(), *model.encoder.stage1.modules()])
    assert all(m.training for m in [*model.encoder.stage2.modules(), *model.head.modules()])
    assert all(
        not p.requires_grad for p in [*model.encoder.stem.parameters(), *model.encoder.stage1.parameters()]
    )


def _mae_layer_id(name: str, num_layers: int) -> int:
    """MAE's ``get_layer_id_for_vit`` (util/lr_decay.py), written for this encoder's parameter names."""
    if name in ("class_token", "pos_embedding") or name.startswith("patch_proj."):
        return 0
    block = re.match(r"blocks\.encoder_layer_(\d+)\.", name)
    return int(block.group(1)) + 1 if block else num_layers


def test_layer_decay_follows_mae_per_vit_block() -> None:
    depth, decay, encoder_lr, head_lr, wd = 4, 0.5, 1.0, 3.0, 0.05
    model = finetuner(
        _vit(depth), 5, encoder_lr=encoder_lr, head_lr=head_lr, layer_decay=decay, weight_decay=wd
    )
    group_of = {id(p): g for g in model.param_groups() for p in g["params"]}
    num_layers = depth + 1
    for name, p in model.encoder.named_parameters():
        group = group_of[id(p)]
        layer = _mae_layer_id(name, num_layers)
        # MAE counts the final LayerNorm with the head; selfsup's stages put it in the last block.
        expected_scale = decay if name.startswith("norm.") else decay ** (num_layers - layer)
        assert group["lr"] == pytest.approx(encoder_lr * expected_scale), name
        no_decay = p.ndim <= 1 or name in ("class_token", "pos_embedding")
        assert group["weight_decay"] == (0.0 if no_decay else wd), name
    for name, p in model.head.named_parameters():
        assert group_of[id(p)]["lr"] == head_lr
        assert group_of[id(p)]["weight_decay"] == (0.0 if name == "bias" else wd)
    assert sum(len(g["params"]) for g in model.param_groups()) == len(list(model.parameters()))


def test_layer_decay_per_resnet_stage_and_frozen_stages_have_no_rate() -> None:
    model = finetuner(_resnet(), 10, freeze_until="stem", encoder_lr=0.1, head_lr=1.0, layer_decay=0.5)
    assert model.stage_lrs() == pytest.approx(
        {"stem": None, "stage1": 0.1 * 0.5**4, "stage2": 0.1 * 0.5**3, "stage3": 0.1 * 0.5**2,
         "stage4": 0.1 * 0.5, "head": 1.0}
    )  # fmt: skip
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not any(id(p) in grouped for p in model.encoder.stem.parameters())
    without_decay = finetuner(_resnet(), 10, encoder_lr=0.1, layer_decay=1.0)
    assert {without_decay.stage_lrs()[s] for s in RESNET_STAGES} == {0.1}


def test_a_parameter_outside_every_stage_is_refused() -> None:
    encoder = _resnet()
    encoder.stage_modules = lambda: [(n, [getattr(encoder, n)]) for n in RESNET_STAGES[:-1]]  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"leaves out trainable parameters \['stage4\."):
        stage_param_groups(encoder, lr=1.0)


def test_a_vit_takes_another_image_size_and_class_count() -> None:
    model = finetuner(_vit(), num_classes=3)  # built for 16 px
    logits = model(torch.randn(2, 3, 24, 24))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.encoder.patch_proj.weight.grad is not None


def test_drop_path_rises_over_the_blocks_and_is_off_in_eval() -> None:
    """Stochastic depth (timm's rule: block k of d drops with rate * k / (d - 1)), no new parameters."""
    vit = _vit(depth=3)
    keys = list(vit.state_dict())
    vit.set_drop_path(0.4)
    assert [b.drop_path.p for b in vit.blocks] == pytest.approx([0.0, 0.2, 0.4])
    assert list(vit.state_dict()) == keys, "an export's parameter names do not change"
    plain = _vit(depth=3)
    plain.load_state_dict(vit.state_dict())
    images = torch.randn(8, 3, 16, 16)
    vit.eval(), plain.eval()
    assert torch.allclose(vit(images), plain(images), atol=1e-6), "no dropping at test time"
    vit.train()
    torch.manual_seed(0)
    first = vit(images)
    assert not torch.allclose(first, vit(images)), "training drops residual branches at random"
    with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\)"):
        vit.set_drop_path(1.0)


def test_mixup_and_cutmix_train_on_soft_targets() -> None:
    from selfsup.eval.finetune import batch_mixing

    assert batch_mixing(0.0, 0.0, 4) is None
    mix = batch_mixing(0.8, 1.0, 4)
    assert mix is not None
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8)) and (targets.max(dim=1).values < 1).any()
    model = finetuner(_vit(), num_classes=4, mixup=0.8, cutmix=1.0, drop_path=0.1, label_smoothing=0.1)
    assert model.encoder.blocks[-1].drop_path.p == pytest.approx(0.1)
    _fit(model, 16, epochs=1)
    with pytest.raises(ValueError, match="ResNetEncoder has no stochastic depth"):
        finetuner(_resnet(), num_classes=4, drop_path=0.1)


def test_drop_path_on_a_resnet_export_is_one_config_error(make_cfg, tmp_path) -> None:
    from selfsup.encoders import save
    from selfsup.errors import ConfigError
    from selfsup.stages.finetune import check_finetune
    from tests.conftest import FAST_DATA

    folder = save(_resnet(), tmp_path / "resnet", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = make_cfg(
        [*FAST_DATA, f"+encoders.r={folder}", "eval.finetune.drop_path=0.1"], config_name="finetune"
    )
    with pytest.raises(ConfigError, match=r"eval.finetune.drop_path.*ResNetEncoder has no stochastic depth"):
        check_finetune(cfg)


def test_rand_augment_is_a_function_of_the_sample_key() -> None:
    from selfsup.data.transforms import KeyedAugmentation

    augment = KeyedAugmentation(16, rand_augment=[2, 9])
    image = (torch.rand(3, 24, 24) * 255).to(torch.uint8)
    state = torch.get_rng_state()
    first, again = augment(image, 7), augment(image, 7)
    assert torch.equal(first, again), "the same key, the same augmentation"
    assert torch.equal(torch.get_rng_state(), state), "torch's generator is left as it was"
    plain = KeyedAugmentation(16)(image, 7)
    others = [augment(image, k) for k in range(8, 16)]
    assert any(not torch.equal(o, plain) for o in others) and len({o.sum().item() for o in others}) > 1


def test_random_erasing_and_rand_augment_train(make_cfg, tmp_path) -> None:
    from selfsup.encoders import save
    from selfsup.errors import ConfigError
    from selfsup.stages.finetune import check_finetune, finetune
    from tests.conftest import FAST_DATA

    model = finetuner(_resnet(), num_classes=4, random_erasing=1.0)
    images = torch.zeros(4, 3, 16, 16)
    assert model.erase is not None
    erased = torch.stack([model.erase(i) for i in images])
    assert all((e != 0).any() for e in erased), "every image got a rectangle of N(0, 1) pixels"
    folder = save(_vit(), tmp_path / "vit", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    common = [
        *FAST_DATA,
        f"+encoders.v={folder}",
        "eval.finetune.max_steps=2",
        "eval.finetune.progress_bar=false",
    ]
    with pytest.raises(
        ConfigError, match=r"eval.finetune.rand_augment'?: must be null or \[num_ops, magnitude\]"
    ):
        check_finetune(make_cfg([*common, "eval.finetune.rand_augment=[9]"], config_name="finetune"))
    cfg = make_cfg(
        [*common, "experiment=finetune_mae_vit", "eval.finetune.max_steps=2", "eval.finetune.epochs=1",
         f"paths.run_dir={tmp_path / 'run'}"],
        config_name="finetune",
    )  # fmt: skip
    assert list(cfg.eval.finetune.rand_augment) == [2, 9] and cfg.eval.finetune.random_erasing == 0.25
    results = finetune(cfg)
    assert results["encoders"]["v"]["steps"] == 2
