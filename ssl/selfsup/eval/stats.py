"""Statistics over seeds, and the rule that says whether one encoder beats another.

Every accuracy is in percent and rounded to 2 decimals here, once, so that metrics.json, report.md,
the console and the sweep summary show the same numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BETTER, WORSE, WITHIN_NOISE = "better", "worse", "within noise"


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample standard deviation and range of one accuracy over seeds (percent, 2 decimals).

    Stored in metrics.json as ``top1_mean``, ``top1_std``, ``top1_min``, ``top1_max`` and ``top1``
    (the per-seed values).
    """

    mean: float
    std: float
    min: float
    max: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> SeedStats:
        """The statistics of per-seed accuracies; the standard deviation of one seed is 0."""
        if not values:
            raise ValueError("no per-seed values to summarize")
        return cls(
            mean=round(statistics.fmean(values), 2),
            std=round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            min=round(min(values), 2),
            max=round(max(values), 2),
            values=tuple(round(v, 2) for v in values),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_mean": self.mean,
            "top1_std": self.std,
            "top1_min": self.min,
            "top1_max": self.max,
            "top1": list(self.values),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedStats:
        return cls(
            mean=data["top1_mean"],
            std=data["top1_std"],
            min=data["top1_min"],
            max=data["top1_max"],
            values=tuple(data["top1"]),
        )

    def mean_std(self) -> str:
        """``mean ± std`` as the tables print it."""
        return f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True)
class Gain:
    """One encoder against a baseline at one layer.

    Attributes:
        gain: difference of the means, in points.
        noise_std: the larger of the two per-seed standard deviations.
        verdict: ``better``, ``worse`` or ``within noise``.
    """

    gain: float
    noise_std: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "noise_std": self.noise_std, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gain:
        return cls(gain=data["gain"], noise_std=data["noise_std"], verdict=data["verdict"])

    def cell(self) -> str:
        """``+1.23``, with the verdict in brackets unless it is ``better``."""
        return f"{self.gain:+.2f}" + ("" if self.verdict == BETTER else f" ({self.verdict})")


def compare(encoder: SeedStats, baseline: SeedStats) -> Gain:
    """Gain of ``encoder`` over ``baseline``, and whether it exceeds the noise.

    The noise is the larger of the two per-seed standard deviations; a difference counts as clear when
    it exceeds twice that and the two seed ranges do not overlap.
    """
    gain = round(encoder.mean - baseline.mean, 2)
    noise = max(encoder.std, baseline.std)
    if gain > 2 * noise and encoder.min > baseline.max:
        verdict = BETTER
    elif -gain > 2 * noise and encoder.max < baseline.min:
        verdict = WORSE
    else:
        verdict = WITHIN_NOISE
    return Gain(gain, noise, verdict)
