"""report.md of one run: what ran, the tables of metrics.json, and the figures beside it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """Floats to 2 decimals, small ones (learning rates) to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and abs(value) < 0.1 else f"{value:.2f}"
    return str(value)


def _probe_section(probe: Mapping[str, Any]) -> str:
    encoders = [k for k in ("pretrained", "random_init") if k in probe] or [
        k for k, v in probe.items() if isinstance(v, dict) and k not in ("comparison",)
    ]
    header = ["layer", "dim", *[f"{e} (mean ± std)" for e in encoders]]
    comparison = probe.get("comparison", {}).get("layers", {})
    if comparison:
        header.append("gain")
    rows = []
    for layer in probe["layers"]:
        first = probe[encoders[0]][layer]
        row: list[Any] = [layer, first["dim"]]
        row += [f"{probe[e][layer]['top1_mean']:.2f} ± {probe[e][layer]['top1_std']:.2f}" for e in encoders]
        if comparison:
            c = comparison[layer]
            row.append(f"{c['gain']:+.2f}" + ("" if c["verdict"] == "better" else f" ({c['verdict']})"))
        rows.append(row)
    seeds = probe.get("seeds", [])
    return f"Top-1 % on the test split over {len(seeds)} probe seeds {seeds}.\n\n" + markdown_table(
        header, rows
    )


def _knn_section(knn: Mapping[str, Any]) -> str:
    encoders = [k for k, v in knn.items() if isinstance(v, dict)]
    rows = [[k, *[knn[e][f"top1_k{k}"] for e in encoders]] for k in knn["ks"]]
    intro = f"Cosine similarity on `{knn['layer']}` features, votes weighted by exp(s / {knn['temperature']}); top-1 %.\n\n"
    return intro + markdown_table(["k", *encoders], rows)


def _finetune_section(finetune: Mapping[str, Any]) -> str:
    """The settings, then per encoder: top-1 over seeds, frozen stages, labeled images and steps."""
    settings = ", ".join(
        f"{key} {finetune[key]}"
        for key in (
            "freeze_until",
            "label_fraction",
            "epochs",
            "max_steps",
            "head_lr",
            "encoder_lr",
            "layer_decay",
        )
        if finetune.get(key) is not None
    )
    rows = [
        [
            name,
            f"{result['top1_mean']:.2f} ± {result['top1_std']:.2f}",
            ", ".join(result.get("frozen_stages", [])) or "none",
            result.get("train_images", ""),
            result.get("steps", ""),
        ]
        for name, result in finetune.items()
        if isinstance(result, dict) and "top1_mean" in result
    ]
    if not rows:
        return "```\n" + str(dict(finetune)) + "\n```"
    table = markdown_table(
        ["encoder", "top-1 % (mean ± std over seeds)", "frozen stages", "labeled images", "steps"], rows
    )
    return f"Settings: {settings}.\n\n{table}"


def write_report(
    run_dir: Path, metrics: Mapping[str, Any], figures: Mapping[str, Path | None], title: str
) -> Path:
    """Write ``<run_dir>/report.md`` from the run's metrics and figures (paths inside the run directory)."""
    parts = [f"# {title}", ""]
    pretrain = metrics.get("pretrain")
    if pretrain:
        parts += [
            "## Pretraining",
            "",
            markdown_table(["metric", "value"], [[k, v] for k, v in pretrain.items()]),
            "",
        ]
    sections = {
        "linear_probe": ("## Linear probe", _probe_section),
        "knn": ("## kNN", _knn_section),
        "finetune": ("## Fine-tuning", _finetune_section),
    }
    for key, (heading, render) in sections.items():
        if metrics.get(key):
            parts += [heading, "", render(metrics[key]), ""]
    shown = {name: path for name, path in figures.items() if path is not None}
    if shown:
        parts += ["## Figures", ""]
        for name, path in shown.items():
            parts += [f"### {name}", "", f"![{name}]({os.path.relpath(path, run_dir)})", ""]
    if "total_time_s" in metrics:
        parts += [f"Total time: {metrics['total_time_s'] / 60:.1f} min.", ""]
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(parts))
    return path
