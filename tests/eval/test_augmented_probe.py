"""Probes on augmented images: the encoder stays frozen (weights and BatchNorm statistics)."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from selfsup.data.synthetic import synthetic
from selfsup.encoders import ResNetEncoder
from selfsup.eval.augmented_probe import AugmentedProbe, dims_of
from tests.conftest import test_datamodule


def test_encoder_is_bit_identical_after_probing() -> None:
    dm = test_datamodule(
        train=partial(synthetic, 32, 16, seed=1),
        test=partial(synthetic, 16, 16, seed=2),
        image_size=16,
        batch_size=8,
    )
    encoder = ResNetEncoder(18, cifar_stem=True)
    layers, grids = ["stage2", "pooled"], {"stage2": 2, "pooled": 1}
    dims = dims_of(encoder, 16, layers, grids, "cls")
    assert dims == {"stage2": 128 * 4, "pooled": 512}
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = AugmentedProbe(encoder, dims, grids, num_classes=4, prepare_batch=dm.prepare_batch)
    probe_before = [p.clone() for p in model.probe.parameters()]
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=dm.labeled_dataloader("train", augment=True))
    scores = trainer.test(model, dataloaders=dm.labeled_dataloader("test"), verbose=False)[0]
    assert set(scores) == {"top1/stage2", "top1/pooled"}
    correct = dict.fromkeys(layers, 0)
    model.eval()
    for batch in dm.labeled_dataloader("test"):  # the same accuracy, counted independently
        batch = dm.prepare_batch(batch)
        with torch.no_grad():
            for layer, logits in model.probe(model.features(batch["image"])).items():
                correct[layer] += int((logits.argmax(1) == batch["label"]).sum())
    for layer in layers:
        assert scores[f"top1/{layer}"] == pytest.approx(100.0 * correct[layer] / 16, abs=1e-4)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert any(not torch.equal(a, b) for a, b in zip(probe_before, model.probe.parameters(), strict=True)), (
        "the probe learned"
    )
