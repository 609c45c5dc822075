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
from selfsup.eval.probe_heads import HEAD_TITLES
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
    """Per layer: its size, each encoder's validation and test top-1 (mean ± std over seeds), the gain.

    A layer an encoder was not probed on is left empty; ``dim`` lists each encoder's size when they
    differ. Validation columns appear when the data has a validation split; the layer validation
    chose for the compared encoder is marked ``*``.
    """
    labels = list(probe.encoders)
    with_val = probe.has_validation()
    header = ["layer", "dim"]
    for label in labels:
        header += [f"{label} val", f"{label} test"] if with_val else [f"{label} (mean ± std)"]
    if probe.comparison is not None:
        header.append("gain (test)")
    best = probe.comparison.best_layer if probe.comparison is not None else None
    rows = []
    for layer in probe.layers():
        results = [probe.encoders[label].layers.get(layer) for label in labels]
        dims = list(dict.fromkeys(r.dim for r in results if r is not None))
        row: list[Any] = [
            f"{layer} *" if layer == best else layer,
            dims[0] if len(dims) == 1 else " / ".join(map(str, dims)),
        ]
        for r in results:
            if with_val:
                row.append("" if r is None or r.val is None else r.val.mean_std())
            row.append("" if r is None else r.top1.mean_std())
        if probe.comparison is not None:
            gain = probe.comparison.layers.get(layer)
            row.append("" if gain is None else gain.cell())
        rows.append(row)
    return header, rows


def knn_table(knn: KnnResults) -> Table:
    """Per k: each encoder's validation (when there is one) and test top-1, and the test gain."""
    labels = list(knn.encoders)
    gains = knn.gains()
    with_val = bool(knn.val)
    header = ["k"]
    for label in labels:
        header += [f"{label} val", f"{label} test"] if with_val else [label]
    header += ["gain (test)"] if gains else []
    rows = []
    for k in knn.ks:
        row: list[Any] = [k]
        for label in labels:
            if with_val:
                row.append(knn.val.get(label, {}).get(k, ""))
            row.append(knn.encoders[label][k])
        rows.append(row + ([f"{gains[k]:+.2f}"] if gains else []))
    return header, rows


def finetune_table(finetune: FinetuneResults) -> Table:
    """Per encoder: validation (when there is one) and test top-1 over seeds, frozen stages, images, steps."""
    with_val = all(r.val is not None for r in finetune.encoders.values()) and bool(finetune.encoders)
    top1 = (
        ["val top-1 %", "test top-1 % (mean ± std over seeds)"]
        if with_val
        else ["top-1 % (mean ± std over seeds)"]
    )
    header = ["encoder", *top1, "frozen stages", "labeled images", "steps"]
    rows = [
        [
            label,
            *([r.val.mean_std()] if with_val and r.val is not None else []),
            r.top1.mean_std(),
            ", ".join(r.frozen_stages) or "none",
            r.train_images,
            r.steps,
        ]
        for label, r in finetune.encoders.items()
    ]
    return header, rows


def pretrain_rows(pretrain: Mapping[str, Any]) -> list[list[Any]]:
    """metrics.json's ``pretrain`` section as rows; each accuracy's chance level goes beside it."""
    chance = pretrain.get("chance") or {}
    rows: list[list[Any]] = []
    for key, value in pretrain.items():
        if key == "chance":
            continue
        if key == "budget" and isinstance(value, Mapping):
            value = (
                f"{value['limit']}: {value['steps']} steps = {value['epochs']:.2f} epochs, about "
                f"{value['seconds'] / 60:.1f} min at {value['images_per_s']:.0f} images/s (estimated early on)"
            )
        rows.append([key, f"{value:.4g} (chance {chance[key]:.4g})" if key in chance else value])
    return rows


def probe_title(probe: ProbeResults) -> str:
    """What the probes were: linear, or the head they had (eval.linear_probe.head)."""
    return HEAD_TITLES.get(probe.head, f"{probe.head} probe")


def probe_intro(probe: ProbeResults) -> str:
    seeds = list(probe.seeds)
    text = f"Top-1 % over {len(seeds)} probe seeds {seeds}, mean ± std."
    if probe.has_validation():
        text += (
            " The validation split (held out of the labeled train images) chooses; the test split is"
            " only reported."
        )
        if probe.comparison is not None and probe.comparison.best_layer is not None:
            text += f" `*`: the best layer on validation ({probe.comparison.best_layer})."
    else:
        text += " On the test split; no validation split, so no layer is chosen."
    return text


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
        parts += [
            f"## {probe_title(probe)}",
            "",
            probe_intro(probe),
            "",
            markdown_table(*probe_table(probe)),
            "",
        ]
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
    run_dir: RunDir,
    metrics: Mapping[str, Any],
    figures: Mapping[str, Path | None],
    title: str,
    extra: Sequence[str] = (),
) -> Path:
    """Write the run's report.md (atomically) from its metrics and figures (paths inside the run directory).

    Args:
        run_dir: the run directory.
        metrics: as metrics.json holds them (``pretrain``, ``linear_probe``, ``knn``, ``finetune``, ...).
        figures: caption -> PNG (None: not drawn, left out).
        title: the page's heading.
        extra: markdown lines placed after the result tables (the published numbers beside ours).
    """
    parts = [f"# {title}", ""]
    pretrain = metrics.get("pretrain")
    if pretrain:
        parts += [
            "## Pretraining",
            "",
            markdown_table(["metric", "value"], pretrain_rows(pretrain)),
            "",
        ]
    parts += [*_sections(metrics), *extra]
    shown = {name: path for name, path in figures.items() if path is not None}
    if shown:
        parts += ["## Figures", ""]
        for name, path in shown.items():
            parts += [f"### {name}", "", f"![{name}]({os.path.relpath(path, run_dir.root)})", ""]
    if "total_time_s" in metrics:
        parts += [f"Total time: {metrics['total_time_s'] / 60:.1f} min.", ""]
    return atomic_write_text(run_dir.report, "\n".join(parts))
