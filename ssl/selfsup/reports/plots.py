"""Figures of a run: probe accuracy per layer, training curves, embeddings, sweep comparisons.

Every function writes one PNG and returns its path; matplotlib runs headless (Agg).
"""

from __future__ import annotations

import csv
import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from selfsup.eval.probe_heads import HEAD_TITLES
from selfsup.eval.results import ProbeResults

log = logging.getLogger(__name__)
COMPARISON_WRAP = 48  # characters per line of a comparison bar's label


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def probe_layers(
    probe: ProbeResults, path: Path, encoders: Sequence[str] = ("pretrained", "random_init")
) -> Path:
    """Grouped bars: linear-probe top-1 per layer for each encoder, with the seed spread as error bars.

    Only the ``encoders`` present in ``probe`` are drawn; a layer an encoder was not probed on has no bar.
    """
    present = [e for e in encoders if e in probe.encoders]
    layers = list(dict.fromkeys(layer for e in present for layer in probe.encoders[e].layers))
    width = 0.8 / max(1, len(present))
    fig, ax = plt.subplots(figsize=(max(3.6, 1.2 + 1.1 * len(layers)), 3.8))
    x = np.arange(len(layers))
    for i, encoder in enumerate(present):
        results = [probe.encoders[encoder].layers.get(layer) for layer in layers]
        ax.bar(
            x + (i - (len(present) - 1) / 2) * width,
            [np.nan if r is None else r.top1.mean for r in results],
            width,
            yerr=[0.0 if r is None else r.top1.std for r in results],
            capsize=3,
            label=encoder.replace("_", " "),
        )
    ax.set_xticks(x, layers)
    ax.set_ylabel("top-1 % (test)")
    ax.set_title(f"{HEAD_TITLES.get(probe.head, probe.head)} per layer")
    # Below the axis: bars start under the y range's bottom, so a legend inside would hide them.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(present), frameon=False)
    low = min(r.top1.mean for e in present for r in probe.encoders[e].layers.values())
    ax.set_ylim(max(0.0, low - 10), None)
    return _save(fig, path)


def read_csv_logs(files: Sequence[Path]) -> list[dict[str, float]]:
    """Rows of CSV training logs (e.g. every attempt of a resumed run, :meth:`RunDir.csv_logs`), by step."""
    rows: list[dict[str, float]] = []
    for file in files:
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return sorted(rows, key=lambda r: r.get("step", 0.0))


def training_curves(csv_files: Sequence[Path], path: Path, keys: Sequence[str] | None = None) -> Path | None:
    """Pretext loss and metrics against the optimizer step, from CSV logs (None without logs).

    Args:
        csv_files: the logs' ``metrics.csv`` files, oldest first (``RunDir.csv_logs()``).
        path: the PNG to write.
        keys: the logged columns to draw; default every ``train/...`` column.
    """
    rows = read_csv_logs(csv_files)
    keys = list(keys or sorted({k for r in rows for k in r if k.startswith("train/")}))
    if not rows or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values)
        ax.set_title(key.removeprefix("train/"))
        ax.set_xlabel("step")
    return _save(fig, path)


def embedding(
    points: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None, path: Path, title: str
) -> Path:
    """A 2-D scatter of embedded points (t-SNE or UMAP output) coloured by class.

    Args:
        points: (N, 2) coordinates.
        labels: (N,) class indices.
        classes: class names, indexed by label.
        path: the PNG to write.
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    cmap = plt.get_cmap("tab10" if labels.max(initial=0) < 10 else "tab20")
    for label in np.unique(labels):
        mask = labels == label
        name = classes[label] if classes is not None and 0 <= label < len(classes) else str(label)
        ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(int(label) % cmap.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(textwrap.fill(title, 60), fontsize=10)  # long titles wrap instead of being clipped
    if len(np.unique(labels)) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    return _save(fig, path)


def comparison(
    labels: Sequence[str],
    values: Sequence[float],
    path: Path,
    title: str,
    xlabel: str,
    errors: Sequence[float] | None = None,
    chance: Sequence[float | None] | None = None,
) -> Path:
    """Horizontal bars of one metric over the runs of a sweep, the figure sized to its labels.

    Args:
        labels: one per bar, what distinguishes the run (long labels wrap onto several lines).
        values: the bar lengths.
        path: the PNG to write.
        title: figure title.
        xlabel: what the bars measure, with its unit.
        errors: a spread per bar (e.g. the std over probe seeds), drawn as error bars and in the value.
        chance: a chance level per bar (None where unknown), drawn as a dashed line across the bar.
    """
    wrapped = [textwrap.fill(label, COMPARISON_WRAP) for label in labels]
    lines_per_bar = [w.count("\n") + 1 for w in wrapped]
    longest = max((len(line) for w in wrapped for line in w.splitlines()), default=1)
    height = 1.3 + sum(0.2 + 0.17 * n for n in lines_per_bar)
    width = 3.8 + 0.075 * longest
    fig, ax = plt.subplots(figsize=(width, height))
    y = np.arange(len(values))
    spread = list(errors) if errors is not None else [0.0] * len(values)
    ax.barh(y, values, xerr=spread if errors is not None else None, capsize=3, color="tab:blue")
    for i, (value, err) in enumerate(zip(values, spread, strict=True)):
        text = f"{value:.2f}" + (f" ± {err:.2f}" if errors is not None else "")
        if value < 0:  # the value beyond the bar's end, on its side of zero
            ax.text(value - err, i, f"{text}  ", va="center", ha="right", fontsize=8)
        else:
            ax.text(value + err, i, f"  {text}", va="center", fontsize=8)
    if chance is not None and any(c is not None for c in chance):
        for i, level in enumerate(chance):
            if level is not None:
                ax.vlines(level, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        xlabel += " (dashed: chance)"  # in the label, not a legend that would cover bars or the axis
    ax.set_yticks(y, wrapped, fontsize=8)
    ax.invert_yaxis()
    high = max((v + e for v, e in zip(values, spread, strict=True)), default=1.0)
    low = min((v - e for v, e in zip(values, spread, strict=True)), default=0.0)
    if low < 0:  # gains can be negative: room for the text on both sides, and the zero line
        reach = max(abs(low), abs(high)) * 1.6 or 1.0
        ax.set_xlim(-reach, reach)
        ax.axvline(0.0, color="black", linewidth=0.8)
    else:
        ax.set_xlim(0, high * 1.3 or 1.0)
    ax.set_xlabel(xlabel)
    ax.set_title(textwrap.fill(title, int(width * 11)), fontsize=10)  # about 11 characters an inch
    return _save(fig, path)


def lines(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Path:
    """One line per series of (x, y) points, e.g. fine-tune accuracy against the label fraction."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
