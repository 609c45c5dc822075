"""report.md of one run, and the tables of the downstream results, rendered once for every reader.

:func:`probe_table`, :func:`knn_table` and :func:`finetune_table` turn a result record into a header
and rows; report.md prints them as markdown, the main job's console with rich, the benchmark scripts
as markdown too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfsup.atomic import atomic_write_text
from selfsup.eval.results import FinetuneResults, KnnResults, ProbeResults
from selfsup.run_dir import RunDir

Table = tuple[list[str], list[list[Any]]]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: Any) -> str:
    """Floats to 2 decimals, small ones (learning rates) to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and abs(value) < 0.1 else f"{value:.2f}"
    return str(value)


def probe_table(probe: ProbeResults) -> Table:
    """Per layer: its size, each encoder's top-1 (mean ± std over seeds) and the gain when compared.

    A layer an encoder was not probed on is left empty; ``dim`` lists each encoder's size when they differ.
    """
    labels = list(probe.encoders)
    header = ["layer", "dim", *[f"{label} (mean ± std)" for label in labels]]
    if probe.comparison is not None:
        header.append("gain")
    rows = []
    for layer in probe.layers():
        results = [probe.encoders[label].layers.get(layer) for label in labels]
        dims = list(dict.fromkeys(r.dim for r in results if r is not None))
        row: list[Any] = [layer, dims[0] if len(dims) == 1 else " / ".join(map(str, dims))]
        row += ["" if r is None else r.top1.mean_std() for r in results]
        if probe.comparison is not None:
            gain = probe.comparison.layers.get(layer)
            row.append("" if gain is None else gain.cell())
        rows.append(row)
    return header, rows


def knn_table(knn: KnnResults) -> Table:
    """Per k: each encoder's top-1, and the gain when two encoders are compared."""
    labels = list(knn.encoders)
    gains = knn.gains()
    header = ["k", *labels, *(["gain"] if gains else [])]
    rows = [
        [k, *[knn.encoders[label][k] for label in labels], *([f"{gains[k]:+.2f}"] if gains else [])]
        for k in knn.ks
    ]
    return header, rows


def finetune_table(finetune: FinetuneResults) -> Table:
    """Per encoder: top-1 over seeds, frozen stages, labeled images and steps."""
    header = ["encoder", "top-1 % (mean ± std over seeds)", "frozen stages", "labeled images", "steps"]
    rows = [
        [label, r.top1.mean_std(), ", ".join(r.frozen_stages) or "none", r.train_images, r.steps]
        for label, r in finetune.encoders.items()
    ]
    return header, rows


def probe_intro(probe: ProbeResults) -> str:
    seeds = list(probe.seeds)
    return f"Top-1 % on the test split over {len(seeds)} probe seeds {seeds}."


def knn_intro(knn: KnnResults) -> str:
    return (
        f"Cosine similarity on `{knn.layer}` features, votes weighted by exp(s / {knn.temperature}); top-1 %."
    )


def finetune_intro(finetune: FinetuneResults) -> str:
    keys = ("freeze_until", "label_fraction", "epochs", "max_steps", "head_lr", "encoder_lr", "layer_decay")
    settings = finetune.settings()
    return "Settings: " + ", ".join(f"{k} {settings[k]}" for k in keys if settings[k] is not None) + "."


def _sections(metrics: Mapping[str, Any]) -> list[str]:
    """The downstream sections of report.md, from metrics.json's ``linear_probe``, ``knn``, ``finetune``."""
    parts: list[str] = []
    if metrics.get("linear_probe"):
        probe = ProbeResults.from_dict(metrics["linear_probe"])
        parts += ["## Linear probe", "", probe_intro(probe), "", markdown_table(*probe_table(probe)), ""]
    if metrics.get("knn"):
        knn = KnnResults.from_dict(metrics["knn"])
        parts += ["## kNN", "", knn_intro(knn), "", markdown_table(*knn_table(knn)), ""]
    if metrics.get("finetune"):
        finetune = FinetuneResults.from_dict(metrics["finetune"])
        parts += [
            "## Fine-tuning",
            "",
            finetune_intro(finetune),
            "",
            markdown_table(*finetune_table(finetune)),
            "",
        ]
    return parts


def write_report(
    run_dir: RunDir, metrics: Mapping[str, Any], figures: Mapping[str, Path | None], title: str
) -> Path:
    """Write the run's report.md (atomically) from its metrics and figures (paths inside the run directory).

    Args:
        run_dir: the run directory.
        metrics: as metrics.json holds them (``pretrain``, ``linear_probe``, ``knn``, ``finetune``, ...).
        figures: caption -> PNG (None: not drawn, left out).
        title: the page's heading.
    """
    parts = [f"# {title}", ""]
    pretrain = metrics.get("pretrain")
    if pretrain:
        parts += [
            "## Pretraining",
            "",
            markdown_table(["metric", "value"], [[k, v] for k, v in pretrain.items()]),
            "",
        ]
    parts += _sections(metrics)
    shown = {name: path for name, path in figures.items() if path is not None}
    if shown:
        parts += ["## Figures", ""]
        for name, path in shown.items():
            parts += [f"### {name}", "", f"![{name}]({os.path.relpath(path, run_dir.root)})", ""]
    if "total_time_s" in metrics:
        parts += [f"Total time: {metrics['total_time_s'] / 60:.1f} min.", ""]
    return atomic_write_text(run_dir.report, "\n".join(parts))
