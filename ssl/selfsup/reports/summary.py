"""One page over a sweep: a leaderboard of every run's metrics and comparison plots.

``selfsup-summary <multirun dir>`` (or automatically at the end of every ``-m`` sweep, through the
Hydra callback :class:`SweepSummary` in conf/hydra/default.yaml) reads each job's metrics.json and the
choices Hydra recorded (.hydra/hydra.yaml), and writes ``summary.md`` and ``summary.csv`` in the sweep
directory, with figures in ``summary_figures/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from selfsup.reports import plots
from selfsup.reports.report import markdown_table

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
GROUPS = ("task", "encoder", "data")


def find_runs(sweep_dir: Path) -> list[Path]:
    """Directories under ``sweep_dir`` (any depth) that hold a metrics.json, in a stable order."""
    return sorted({p.parent for p in sweep_dir.rglob("metrics.json")}, key=lambda p: str(p))


def run_row(run_dir: Path) -> dict[str, Any]:
    """One leaderboard row: the run's group choices, its overrides, and its headline metrics."""
    row: dict[str, Any] = {"run": run_dir.name}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        hydra_cfg = OmegaConf.load(hydra_file).hydra
        choices = hydra_cfg.runtime.choices
        row.update({group: choices.get(group) for group in GROUPS})
        row["overrides"] = " ".join(
            o for o in hydra_cfg.overrides.task if not o.startswith(("paths.", "hydra."))
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row.update(headline_metrics(metrics))
    return row


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flatten a run's metrics.json into the numbers a leaderboard compares."""
    out: dict[str, Any] = {}
    pretrain = metrics.get("pretrain", {})
    for key in ("steps", "time_s", "loss"):
        if key in pretrain:
            out[f"pretrain_{key}"] = pretrain[key]
    probe = metrics.get("linear_probe", {})
    main = (
        "pretrained"
        if "pretrained" in probe
        else next((k for k, v in probe.items() if isinstance(v, dict) and k != "comparison"), None)
    )
    if main is not None and probe.get("layers"):
        for layer in probe["layers"]:
            out[f"probe_{layer}"] = probe[main][layer]["top1_mean"]
            if "comparison" in probe:
                out[f"gain_{layer}"] = probe["comparison"]["layers"][layer]["gain"]
        best = max(probe["layers"], key=lambda layer: probe[main][layer]["top1_mean"])
        out["probe_best"] = probe[main][best]["top1_mean"]
        out["probe_best_layer"] = best
    knn = metrics.get("knn", {})
    knn_main = (
        "pretrained"
        if "pretrained" in knn
        else next((k for k, v in knn.items() if isinstance(v, dict)), None)
    )
    if knn_main is not None:
        out.update({f"knn_{k}": v for k, v in knn[knn_main].items()})
    finetune = metrics.get("finetune", {})
    for key in ("freeze_until", "label_fraction"):
        if key in finetune:
            out[key] = finetune[key]
    for name, result in finetune.items():
        if isinstance(result, dict) and "top1_mean" in result:
            out[f"finetune_{name}"] = result["top1_mean"]
    return out


def summarize(sweep_dir: str | Path) -> Path | None:
    """Write summary.md, summary.csv and comparison figures for the runs under ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    if not runs:
        log.warning("no runs with metrics.json under %s: no summary written", sweep_dir)
        return None
    rows = [run_row(r) for r in runs]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    sort_key = "probe_best" if any("probe_best" in r for r in rows) else columns[-1]
    rows.sort(key=lambda r: -r[sort_key] if isinstance(r.get(sort_key), (int, float)) else float("inf"))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    varying = [g for g in (*GROUPS, "overrides") if len({r.get(g) for r in rows}) > 1] or ["run"]
    figures = _figures(rows, columns, varying, sweep_dir / "summary_figures")
    parts = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} runs, best first by `{sort_key}`. Accuracies are top-1 % on each run's test split.",
        "",
        markdown_table(columns, [[r.get(c, "") for c in columns] for r in rows]),
        "",
    ]
    if "probe_best" in columns:
        parts += [
            "`probe_best` is the test accuracy of each run's best probed layer (`probe_best_layer`), chosen on",
            "the test split as in published per-layer tables; compare runs that probe the same layers, or by",
            "a fixed `probe_<layer>` column.",
            "",
        ]
    for name, path in figures.items():
        parts += [f"## {name}", "", f"![{name}]({path.relative_to(sweep_dir)})", ""]
    out = sweep_dir / SUMMARY_FILE
    out.write_text("\n".join(parts))
    log.info("sweep summary of %d runs written to %s", len(rows), out)
    return out


def _figures(
    rows: list[dict[str, Any]], columns: list[str], varying: list[str], folder: Path
) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    for metric in [c for c in columns if c.startswith(("probe_best", "knn_top1", "finetune_"))]:
        if metric == "probe_best_layer":
            continue
        figures[metric] = plots.comparison(rows, metric, varying, folder / f"{metric}.png")
    # The freeze-versus-fine-tune picture: accuracy against the label fraction, one line per setting.
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r, context in zip(rows, _series_contexts(rows, varying), strict=True):
        if isinstance(r.get("label_fraction"), (int, float)):
            for key in (k for k in r if k.startswith("finetune_")):
                setting = f"{key.removeprefix('finetune_')}, frozen until {r.get('freeze_until') or 'nothing'}{context}"
                points[setting].append((float(r["label_fraction"]), float(r[key])))
    if points:
        figures["fine-tuning by label fraction"] = plots.lines(
            points,
            folder / "finetune_label_fraction.png",
            "fraction of labels",
            "top-1 %",
            "Freeze or fine-tune",
            logx=True,
        )
    return figures


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends (conf/hydra/default.yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            summarize(config.hydra.sweep.dir)
        except Exception as e:  # a failed summary must not fail a finished sweep
            log.error("could not write the sweep summary: %s", e)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Summarize the runs of a sweep (a multirun directory) on one page."
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. outputs/multirun/2026-11-21_10-00-00")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    out = summarize(args.sweep_dir)
    if out is None:
        parser.exit(1, f"no runs with metrics.json under {args.sweep_dir}\n")
    print(out)


def _series_contexts(rows: list[dict[str, Any]], varying: list[str]) -> list[str]:
    """What else distinguishes each row's line in the label-fraction plot: the groups (of ``varying``)
    and overrides that vary across the sweep, other than the plot's own axes (label fraction) and lines
    (freeze_until).

    Without it, a sweep over, say, tasks x label fractions would join different tasks into one line.
    """
    # The plot's axes, and group choices (shown by name below).
    axes = ("eval.finetune.label_fraction=", "eval.finetune.freeze_until=", *(f"{g}=" for g in GROUPS))
    tokens = [{o for o in str(r.get("overrides") or "").split() if not o.startswith(axes)} for r in rows]
    shared = set.intersection(*tokens)
    groups = [g for g in varying if g in GROUPS]
    contexts = []
    for row, own in zip(rows, tokens, strict=True):
        parts = [str(row.get(g)) for g in groups] + sorted(own - shared)
        contexts.append(f" ({', '.join(parts)})" if parts else "")
    return contexts
