"""One page over a sweep: a leaderboard of every run's metrics and comparison plots.

``selfsup-summary <multirun dir>`` (or automatically at the end of every ``-m`` sweep, through the
Hydra callback :class:`SweepSummary` in conf/hydra/default.yaml) reads each job's metrics.json and the
choices Hydra recorded (.hydra/hydra.yaml), and writes ``summary.md`` and ``summary.csv`` in the sweep
directory, with figures in ``summary_figures/``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from selfsup.atomic import atomic_write_text
from selfsup.eval.results import FinetuneResults, KnnResults, ProbeResults
from selfsup.reports import plots
from selfsup.reports.report import markdown_table
from selfsup.run_dir import RunDir

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
SUMMARY_CSV = "summary.csv"
GROUPS = ("task", "encoder", "data")


def find_runs(sweep_dir: Path) -> list[Path]:
    """Directories under ``sweep_dir`` (any depth) that hold a metrics.json, in a stable order."""
    name = RunDir.default(sweep_dir).metrics.name
    return sorted({p.parent for p in sweep_dir.rglob(name)}, key=lambda p: str(p))


def run_row(run_dir: Path) -> dict[str, Any]:
    """One leaderboard row: the run's group choices, its overrides, and its headline metrics."""
    run = RunDir.open(run_dir)
    row: dict[str, Any] = {"run": run_dir.name}
    hydra_file = run.hydra_dir / "hydra.yaml"
    if hydra_file.is_file():
        hydra_cfg = OmegaConf.load(hydra_file).hydra
        choices = hydra_cfg.runtime.choices
        row.update({group: choices.get(group) for group in GROUPS})
        row["overrides"] = " ".join(
            o for o in hydra_cfg.overrides.task if not o.startswith(("paths.", "hydra."))
        )
    row.update(headline_metrics(run.read_metrics()))
    return row


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flatten a run's metrics.json into the numbers a leaderboard compares.

    Probes and kNN are reported for one encoder: the compared one (the main job's pretrained
    encoder), else the first; fine-tuning for every encoder.
    """
    out: dict[str, Any] = {}
    pretrain = metrics.get("pretrain", {})
    for key in ("steps", "time_s", "loss"):
        if key in pretrain:
            out[f"pretrain_{key}"] = pretrain[key]
    if metrics.get("linear_probe"):
        out.update(_probe_columns(ProbeResults.from_dict(metrics["linear_probe"])))
    if metrics.get("knn"):
        knn = KnnResults.from_dict(metrics["knn"])
        main = knn.versus[0] if knn.versus is not None else next(iter(knn.encoders), None)
        if main is not None:
            out.update({f"knn_top1_k{k}": top1 for k, top1 in knn.encoders[main].items()})
    if metrics.get("finetune"):
        finetune = FinetuneResults.from_dict(metrics["finetune"])
        out["freeze_until"] = finetune.freeze_until
        out["label_fraction"] = finetune.label_fraction
        out.update({f"finetune_{label}": r.top1.mean for label, r in finetune.encoders.items()})
    return out


def _probe_columns(probe: ProbeResults) -> dict[str, Any]:
    """``probe_<layer>`` (and ``gain_<layer>`` when compared) of the main encoder, and its best layer."""
    main = probe.comparison.encoder if probe.comparison is not None else next(iter(probe.encoders), None)
    if main is None or not probe.encoders[main].layers:
        return {}
    layers = probe.encoders[main].layers
    out: dict[str, Any] = {}
    for layer, result in layers.items():
        out[f"probe_{layer}"] = result.top1.mean
        if probe.comparison is not None and layer in probe.comparison.layers:
            out[f"gain_{layer}"] = probe.comparison.layers[layer].gain
    best = max(layers, key=lambda layer: layers[layer].top1.mean)
    out["probe_best"] = layers[best].top1.mean
    out["probe_best_layer"] = best
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
    atomic_write_text(sweep_dir / SUMMARY_CSV, _csv_text(columns, rows))
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
    out = atomic_write_text(sweep_dir / SUMMARY_FILE, "\n".join(parts))
    log.info("sweep summary of %d runs written to %s", len(rows), out)
    return out


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """The leaderboard as CSV (a column a row lacks is left empty)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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
