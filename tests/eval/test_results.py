"""Result records: any encoder label is safe, each encoder keeps its own layers, to_dict/from_dict round trip."""

from __future__ import annotations

import json

import pytest

from selfsup.eval.results import (
    Comparison,
    EncoderFinetune,
    EncoderProbe,
    FinetuneResults,
    KnnResults,
    LayerResult,
    ProbeResults,
)
from selfsup.eval.stats import WITHIN_NOISE, SeedStats
from selfsup.reports.report import finetune_table, knn_table, probe_table
from selfsup.reports.summary import headline_metrics

# Labels that were once metadata keys beside the encoders, and would have overwritten them.
RESERVED = ("layers", "seeds", "mode", "comparison", "ks")


def _probe(layers: dict[str, float], dim: int = 8) -> EncoderProbe:
    return EncoderProbe(
        {name: LayerResult(SeedStats.of([top1, top1 + 1]), dim, 1) for name, top1 in layers.items()}
    )


def _json_round_trip(data: dict) -> dict:
    return json.loads(json.dumps(data))


def test_probe_labels_that_were_metadata_keys_survive_a_round_trip() -> None:
    probe = ProbeResults(
        "cached", (0, 1), {label: _probe({"pooled": 10.0 * i}) for i, label in enumerate(RESERVED, 1)}
    )
    back = ProbeResults.from_dict(_json_round_trip(probe.to_dict()))
    assert back == probe
    assert list(back.encoders) == list(RESERVED)
    assert back.mode == "cached" and back.seeds == (0, 1)
    assert back.encoders["layers"].layers["pooled"].top1.mean == 10.5
    assert back.encoders["ks"].layers["pooled"].top1.mean == 50.5


def test_a_resnet_beside_a_vit_keeps_both_layer_lists() -> None:
    resnet = _probe({"stem": 20.0, "stage1": 30.0, "pooled": 40.0}, dim=64)
    vit = _probe({"patch_embed": 25.0, "block1": 35.0, "pooled": 45.0}, dim=32)
    probe = ProbeResults.from_dict(
        _json_round_trip(ProbeResults("cached", (0,), {"r": resnet, "v": vit}).to_dict())
    )
    assert list(probe.encoders["r"].layers) == ["stem", "stage1", "pooled"]
    assert list(probe.encoders["v"].layers) == ["patch_embed", "block1", "pooled"]
    header, rows = probe_table(probe)
    assert header == ["layer", "dim", "r (mean ± std)", "v (mean ± std)"]
    assert rows == [
        ["stem", 64, "20.50 ± 0.71", ""],
        ["stage1", 64, "30.50 ± 0.71", ""],
        ["pooled", "64 / 32", "40.50 ± 0.71", "45.50 ± 0.71"],
        ["patch_embed", 32, "", "25.50 ± 0.71"],
        ["block1", 32, "", "35.50 ± 0.71"],
    ]


def test_comparison_is_computed_once_and_round_trips() -> None:
    probe = ProbeResults(
        "cached",
        (0, 1),
        {
            "pretrained": _probe({"stage2": 50.0, "stage3": 60.0}),
            "random_init": _probe({"stage2": 49.0, "stage3": 40.0}),
        },
    ).compared("pretrained", "random_init")
    c = probe.comparison
    assert c is not None and c.best_layer is None and c.best_gain is None, "no validation: nothing is chosen"
    assert c.layers["stage2"].verdict == WITHIN_NOISE  # gain 1 < 2 * std 0.71, and the ranges overlap
    assert c.layers["stage3"].cell() == "+20.00"
    data = _json_round_trip(probe.to_dict())
    assert data["comparison"]["layers"]["stage3"] == {"gain": 20.0, "noise_std": 0.71, "verdict": "better"}
    assert ProbeResults.from_dict(data) == probe
    assert probe_table(probe)[1][1] == ["stage3", 8, "60.50 ± 0.71", "40.50 ± 0.71", "+20.00"]
    assert headline_metrics({"linear_probe": data}) == {
        "probe_stage2": 50.5,
        "gain_stage2": 1.0,
        "probe_stage3": 60.5,
        "gain_stage3": 20.0,
    }


def _validated(layers: dict[str, tuple[float, float]]) -> EncoderProbe:
    """Probes with (validation, test) top-1 per layer."""
    return EncoderProbe(
        {
            name: LayerResult(SeedStats.of([test, test + 1]), 8, 1, SeedStats.of([val, val + 1]))
            for name, (val, test) in layers.items()
        }
    )


def test_the_best_layer_is_chosen_on_validation_never_on_test() -> None:
    # stage3 is best on test, stage2 on validation: validation chooses.
    probe = ProbeResults(
        "cached",
        (0, 1),
        {
            "pretrained": _validated({"stage2": (70.0, 50.0), "stage3": (60.0, 60.0)}),
            "random_init": _validated({"stage2": (40.0, 45.0), "stage3": (40.0, 40.0)}),
        },
    ).compared("pretrained", "random_init")
    c = probe.comparison
    assert c is not None and c.best_layer == "stage2" and c.best_gain == 5.0
    data = _json_round_trip(probe.to_dict())
    assert data["encoders"]["pretrained"]["layers"]["stage2"]["val"]["top1_mean"] == 70.5
    assert ProbeResults.from_dict(data) == probe and probe.has_validation()
    header, rows = probe_table(probe)
    assert header == [
        "layer",
        "dim",
        "pretrained val",
        "pretrained test",
        "random_init val",
        "random_init test",
        "gain (test)",
    ]
    assert rows[0] == ["stage2 *", 8, "70.50 ± 0.71", "50.50 ± 0.71", "40.50 ± 0.71", "45.50 ± 0.71", "+5.00"]
    headline = headline_metrics({"linear_probe": data})
    assert headline["probe_best_layer"] == "stage2" and headline["probe_best_val"] == 70.5
    assert headline["probe_best"] == 50.5, "the chosen layer's test accuracy is reported"
    assert headline["gain_best"] == 5.0, "and the gain over random init there (on test), not stage3's"


def test_comparison_needs_a_shared_layer() -> None:
    probe = ProbeResults("cached", (0,), {"a": _probe({"stem": 1.0}), "b": _probe({"block1": 2.0})})
    with pytest.raises(ValueError, match="share no probed layer"):
        Comparison.of(probe, "a", "b")


def test_knn_labels_that_were_metadata_keys_survive_and_gains() -> None:
    knn = KnnResults(
        "pooled", (20, 200), 0.07, {label: {20: 30.0 + i, 200: 28.0 + i} for i, label in enumerate(RESERVED)}
    )
    data = _json_round_trip(knn.to_dict())
    assert data["encoders"]["ks"] == {"top1_k20": 34.0, "top1_k200": 32.0}
    assert data["ks"] == [20, 200]
    assert KnnResults.from_dict(data) == knn
    assert knn_table(knn) == (
        ["k", *RESERVED],
        [[20, 30.0, 31.0, 32.0, 33.0, 34.0], [200, 28.0, 29.0, 30.0, 31.0, 32.0]],
    )
    versus = KnnResults("pooled", (20,), 0.07, {"p": {20: 40.25}, "r": {20: 30.5}}, versus=("p", "r"))
    assert versus.gains() == {20: 9.75}
    assert knn_table(versus) == (["k", "p", "r", "gain (test)"], [[20, 40.25, 30.5, "+9.75"]])
    assert KnnResults.from_dict(_json_round_trip(versus.to_dict())) == versus
    validated = KnnResults(
        "pooled",
        (20,),
        0.07,
        {"p": {20: 40.25}, "r": {20: 30.5}},
        ("p", "r"),
        val={"p": {20: 41.0}, "r": {20: 31.0}},
    )
    assert KnnResults.from_dict(_json_round_trip(validated.to_dict())) == validated
    assert knn_table(validated) == (
        ["k", "p val", "p test", "r val", "r test", "gain (test)"],
        [[20, 41.0, 40.25, 31.0, 30.5, "+9.75"]],
    )


def test_finetune_labels_that_are_setting_names_survive_a_round_trip() -> None:
    one = EncoderFinetune(SeedStats.of([41.0, 43.0]), ("stem",), {"stem": None, "head": 1e-3}, 16, 2, 1.5)
    labels = ("seeds", "freeze_until", "label_fraction", "encoders")
    results = FinetuneResults(
        freeze_until="stem", label_fraction=0.25, seeds=(0, 1), epochs=None, max_steps=2, batch_size=8,
        head_lr=1e-3, encoder_lr=2e-4, layer_decay=1.0, num_classes=4, image_size=32,
        encoders=dict.fromkeys(labels, one),
    )  # fmt: skip
    data = _json_round_trip(results.to_dict())
    assert data["seeds"] == [0, 1] and data["freeze_until"] == "stem" and set(data["encoders"]) == set(labels)
    assert FinetuneResults.from_dict(data) == results
    assert finetune_table(results)[1][0] == ["seeds", "42.00 ± 1.41", "stem", 16, 2]
    assert headline_metrics({"finetune": data}) == {
        "freeze_until": "stem",
        "label_fraction": 0.25,
        **{f"finetune_{label}": 42.0 for label in labels},
        **{f"finetune_{label}_std": 1.41 for label in labels},
    }
