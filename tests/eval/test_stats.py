"""Seed statistics and the gain/verdict rule, on known values."""

from __future__ import annotations

import pytest

from selfsup.eval.stats import BETTER, WITHIN_NOISE, WORSE, Gain, SeedStats, compare


def test_seed_stats_of_known_values() -> None:
    stats = SeedStats.of([50.0, 52.0, 54.0])
    assert stats == SeedStats(mean=52.0, std=2.0, min=50.0, max=54.0, values=(50.0, 52.0, 54.0))
    assert stats.mean_std() == "52.00 ± 2.00"


def test_seed_stats_round_to_two_decimals_and_one_seed_has_no_spread() -> None:
    assert SeedStats.of([1 / 3 * 100]) == SeedStats(33.33, 0.0, 33.33, 33.33, (33.33,))
    assert SeedStats.of([10.0, 10.5]).std == 0.35  # sample std: 0.5 / sqrt(2) = 0.3536
    with pytest.raises(ValueError, match="no per-seed values"):
        SeedStats.of([])


def test_seed_stats_round_trip_with_metrics_json_keys() -> None:
    stats = SeedStats.of([40.0, 41.0])
    data = stats.to_dict()
    assert data == {
        "top1_mean": 40.5,
        "top1_std": 0.71,
        "top1_min": 40.0,
        "top1_max": 41.0,
        "top1": [40.0, 41.0],
    }
    assert SeedStats.from_dict(data) == stats


@pytest.mark.parametrize(
    ("encoder", "baseline", "expected"),
    [
        # gain 6 > 2 * noise 1, and the ranges [49, 51] and [43, 45] do not overlap
        ([49.0, 50.0, 51.0], [43.0, 44.0, 45.0], Gain(6.0, 1.0, BETTER)),
        ([43.0, 44.0, 45.0], [49.0, 50.0, 51.0], Gain(-6.0, 1.0, WORSE)),
        # gain 1.5 < 2 * noise 1
        ([49.0, 50.0, 51.0], [47.5, 48.5, 49.5], Gain(1.5, 1.0, WITHIN_NOISE)),
        # gain 5.3 > 2 * noise 1.58, but the seed ranges overlap (45 .. 50 against 44 .. 46)
        ([50.0] * 9 + [45.0], [44.0] * 9 + [46.0], Gain(5.3, 1.58, WITHIN_NOISE)),
        # one seed each: no noise estimate, any difference with separate ranges counts
        ([40.0], [39.99], Gain(0.01, 0.0, BETTER)),
        ([40.0], [40.0], Gain(0.0, 0.0, WITHIN_NOISE)),
    ],
)
def test_compare_on_known_values(encoder: list[float], baseline: list[float], expected: Gain) -> None:
    assert compare(SeedStats.of(encoder), SeedStats.of(baseline)) == expected


def test_gain_cell_names_the_verdict_unless_better() -> None:
    assert Gain(1.234, 0.1, BETTER).cell() == "+1.23"
    assert Gain(-0.5, 1.0, WITHIN_NOISE).cell() == "-0.50 (within noise)"
    assert Gain.from_dict(Gain(2.0, 0.5, WORSE).to_dict()) == Gain(2.0, 0.5, WORSE)
