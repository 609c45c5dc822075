"""One page over a sweep: a leaderboard of every run's metrics and comparison plots.

``selfsup-summary <multirun dir>`` (or automatically after every job of a ``-m`` sweep, through the
Hydra callback :class:`~selfsup.stages.sweep.SweepCallback` in conf/hydra/default.yaml) reads each job's
metrics.json and the choices Hydra recorded (.hydra/hydra.yaml), and writes ``summary.md`` and
``summary.csv`` in the sweep directory, with figures in ``summary_figures/``. Jobs that failed (an
``error`` section in their metrics.json) are listed with their error.

Figures compare like with like: bars are labelled by the settings that vary between jobs, probe and
fine-tuning bars carry the probe-seed spread, and pretext tasks are compared by accuracy against their
chance level (recorded by each task: ``pretrain.chance``), never by loss (a rotation loss and a reconstruction loss are on
different scales).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from selfsup.atomic import atomic_write_text
from selfsup.errors import ConfigError
from selfsup.eval.results import FinetuneResults, KnnResults, ProbeResults
from selfsup.reports import plots, published
from selfsup.reports.report import markdown_table
from selfsup.run_dir import RunDir

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
SUMMARY_CSV = "summary.csv"
GROUPS = ("task", "encoder", "data")
IMAGES_PER_S = "pretrain_images_per_s"
# What pretrain.images_per_s counts, said beside the column.
IMAGES_PER_S_NOTE = (
    f"`{IMAGES_PER_S}` counts source images (before the task makes rotations, tiles or masks) per "
    "second of the training loop, over all devices."
)


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
    metrics = run.read_metrics()
    row.update(headline_metrics(metrics))
    row.update(pretext_accuracy(metrics.get("pretrain", {})))
    if metrics.get("error"):
        row["error"] = f"{metrics['error'].get('type')}: {_first_line(metrics['error'].get('message'))}"
    return row


def pretext_accuracy(pretrain: dict[str, Any]) -> dict[str, Any]:
    """``pretext_acc`` (%) and ``pretext_chance`` (%) of the first accuracy the task gave a chance level.

    The task owns its chance levels (:meth:`~selfsup.tasks.base.PretextTask.chance_levels`, recorded
    as ``pretrain.chance``); a task that logs no accuracy (MAE, SimMIM) gives none.
    """
    for key, level in (pretrain.get("chance") or {}).items():
        if isinstance(pretrain.get(key), (int, float)):
            return {
                "pretext_metric": key,
                "pretext_acc": 100 * float(pretrain[key]),
                "pretext_chance": 100 * level,
            }
    return {}


def _first_line(text: Any, limit: int = 160) -> str:
    """The first line of ``text``, cut to ``limit`` characters (a table cell stays one line)."""
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failed_runs(sweep_dir: str | Path) -> list[str]:
    """Names of the runs under ``sweep_dir`` whose metrics.json records an error."""
    return [r.name for r in find_runs(Path(sweep_dir)) if RunDir.open(r).read_metrics().get("error")]


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flatten a run's metrics.json into the numbers a leaderboard compares.

    Probes and kNN are reported for one encoder: the compared one (the main job's pretrained
    encoder), else the first; fine-tuning for every encoder.
    """
    out: dict[str, Any] = {}
    pretrain = metrics.get("pretrain", {})
    for key in ("steps", "time_s", "images_per_s", "loss"):
        if key in pretrain:
            out[f"pretrain_{key}"] = pretrain[key]
    if metrics.get("linear_probe"):
        out.update(_probe_columns(ProbeResults.from_dict(metrics["linear_probe"])))
    if metrics.get("knn"):
        knn = KnnResults.from_dict(metrics["knn"])
        main = knn.versus[0] if knn.versus is not None else next(iter(knn.encoders), None)
        if main is not None:
            out.update({f"knn_val_top1_k{k}": top1 for k, top1 in knn.val.get(main, {}).items()})
            out.update({f"knn_top1_k{k}": top1 for k, top1 in knn.encoders[main].items()})
    if metrics.get("finetune"):
        finetune = FinetuneResults.from_dict(metrics["finetune"])
        out["freeze_until"] = finetune.freeze_until
        out["label_fraction"] = finetune.label_fraction
        for label, r in finetune.encoders.items():
            if r.val is not None:
                out[f"finetune_{label}_val"] = r.val.mean
            out[f"finetune_{label}"] = r.top1.mean
            out[f"finetune_{label}_std"] = r.top1.std
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
    best = probe.encoders[main].best_layer()  # on validation; None without a validation split
    if best is not None:
        out["probe_best_val"] = layers[best].val.mean  # type: ignore[union-attr]
        out["probe_best"] = layers[best].top1.mean
        out["probe_best_std"] = layers[best].top1.std
        out["probe_best_layer"] = best
        if probe.comparison is not None and best in probe.comparison.layers:
            out["gain_best"] = probe.comparison.layers[best].gain
    return out


def summarize(sweep_dir: str | Path) -> Path | None:
    """Write summary.md, summary.csv and comparison figures for the runs under ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    if not runs:
        log.warning("no runs with metrics.json under %s: no summary written", sweep_dir)
        return None
    rows = [run_row(r) for r in runs]
    folders = {id(row): folder for row, folder in zip(rows, runs, strict=True)}
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "error"))
    columns += ["error"] if any("error" in r for r in rows) else []
    # The page shows what varies between jobs (settings); summary.csv keeps every override.
    shown = ["run", "settings", *(c for c in columns if c not in ("run", "overrides"))]
    sort_key = _sort_key(columns)
    if sort_key is not None:
        rows.sort(key=lambda r: -r[sort_key] if isinstance(r.get(sort_key), (int, float)) else float("inf"))
    order = f"best first by `{sort_key}`" if sort_key is not None else "in job order"
    for row, label in zip(rows, varying_labels(rows), strict=True):
        row["settings"] = label
    extra = ["overrides"] if "overrides" in columns else []
    atomic_write_text(sweep_dir / SUMMARY_CSV, _csv_text(shown + extra, rows))
    varying = [g for g in (*GROUPS, "overrides") if len({r.get(g) for r in rows}) > 1] or ["run"]
    figures = _figures(rows, columns, varying, sweep_dir / "summary_figures")
    failed = [r for r in rows if "error" in r]
    parts = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} runs ({len(failed)} failed), {order}. Accuracies are top-1 % on "
        "each run's test split; `*_std` is the spread over probe seeds.",
        "",
        markdown_table(shown, [[r.get(c, "") for c in shown] for r in rows]),
        "",
    ]
    if IMAGES_PER_S in columns:
        parts += [IMAGES_PER_S_NOTE, ""]
    if "pretrain_loss" in columns and len({r.get("task") for r in rows}) > 1:
        parts += [
            "`pretrain_loss` is each task's own loss: losses of different tasks are not comparable;",
            "`pretext_acc` against `pretext_chance` (%) is, where the task logs an accuracy.",
            "",
        ]
    if "probe_best" in columns:
        parts += [
            "`probe_best` is the test accuracy of each run's best probed layer (`probe_best_layer`), chosen on",
            "the validation split (`probe_best_val`), never on test; compare runs that probe the same layers,",
            "or by a fixed `probe_<layer>` column.",
            *(
                ["`gain_best` is the pretrained encoder's gain over its random initialization at that layer."]
                if "gain_best" in columns
                else []
            ),
            "",
        ]
    parts += published.section([_published_run(folders[id(r)], r) for r in rows if "error" not in r])
    if failed:
        parts += ["## Failed jobs", ""]
        for r in failed:
            error = RunDir.open(folders[id(r)]).read_metrics().get("error", {})
            parts += [f"- `{r['run']}` ({r['settings']}): {error.get('type')}: {error.get('message')}"]
            parts += ["", "  ```", *(f"  {line}" for line in error.get("traceback", [])), "  ```", ""]
    for name, path in figures.items():
        parts += [f"## {name}", "", f"![{name}]({path.relative_to(sweep_dir)})", ""]
    out = atomic_write_text(sweep_dir / SUMMARY_FILE, "\n".join(parts))
    log.info("sweep summary of %d runs written to %s", len(rows), out)
    return out


def _published_run(folder: Path, row: dict[str, Any]) -> published.PublishedRun:
    """A row as the published comparison needs it, with the entries its job's config lists and matches."""
    run = RunDir.open(folder)
    config, hydra_file = run.hydra_dir / "config.yaml", run.hydra_dir / "hydra.yaml"
    cfg = OmegaConf.load(config) if config.is_file() else None
    if not isinstance(cfg, DictConfig) or not hydra_file.is_file():
        return published.PublishedRun(str(row["settings"]), row, [])
    hydra = OmegaConf.load(hydra_file).hydra
    choices = dict(hydra.runtime.choices)
    try:
        entries = published.matching(cfg, choices)
    except ConfigError as e:
        log.warning("%s: its published numbers are not shown: %s", row["run"], e)
        entries = []
    return published.PublishedRun(str(row["settings"]), row, list(hydra.overrides.task), choices, entries)


def _sort_key(columns: list[str]) -> str | None:
    """The column runs are ranked by: the best probe on validation, else kNN, fine-tuning, pretext accuracy.

    Runs are ranked on validation when they have it (``probe_best_val``), never on test alone.
    """
    validated = [
        c
        for c in columns
        if c == "probe_best_val"
        or c.startswith("knn_val_top1")
        or (c.startswith("finetune_") and c.endswith("_val"))
    ]
    if validated:
        return validated[0]
    ranked = [c for c in columns if c.startswith(("probe_best", "knn_top1", "finetune_", "pretext_acc"))]
    ranked = [c for c in ranked if not c.endswith(("_std", "_layer"))]
    return ranked[0] if ranked else None


def varying_labels(rows: list[dict[str, Any]]) -> list[str]:
    """A label per row naming only the settings that differ between rows: ``task=jigsaw, optim.lr=0.002``.

    Settings are the group choices and the command-line overrides (``paths.``/``hydra.`` left out);
    a row without a setting the others have shows it as ``-``. Rows that differ in nothing are named
    by their run folder.
    """
    settings = []
    for r in rows:
        own = {g: str(r[g]) for g in GROUPS if r.get(g) is not None}
        for token in str(r.get("overrides") or "").split():
            key, _, value = token.lstrip("+~").partition("=")
            own[key] = value
        settings.append(own)
    keys = list(dict.fromkeys(k for own in settings for k in own))
    varying = [k for k in keys if len({own.get(k) for own in settings}) > 1]
    if not varying:
        return [str(r["run"]) for r in rows]
    return [", ".join(f"{k}={own.get(k, '-')}" for k in varying) for own in settings]


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """The leaderboard as CSV (a column a row lacks is left empty)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# Bar figures of a sweep: metric -> (title, x label).
TITLES = {
    "probe_best": (
        "Linear probe at each run's best layer on validation",
        "top-1 % (test), ± std over probe seeds",
    ),
    "gain_best": (
        "Linear-probe gain over the random initialization, at each run's best layer on validation",
        "top-1 points (test), pretrained - random init",
    ),
    "knn_top1": ("kNN", "top-1 % (test)"),
    "finetune_": ("Fine-tuning", "top-1 % (test), ± std over seeds"),
}


def _figures(
    rows: list[dict[str, Any]], columns: list[str], varying: list[str], folder: Path
) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    bars = [
        c
        for c in columns
        if c.startswith(tuple(TITLES)) and not c.endswith(("_std", "_layer", "_val")) and c not in varying
    ]
    for metric in bars:
        figures[metric] = _bars(rows, metric, folder, chance=None)
    if any("pretext_acc" in r for r in rows):
        figures["pretext accuracy"] = _bars(rows, "pretext_acc", folder, chance="pretext_chance")
    # The freeze-versus-fine-tune picture: accuracy against the label fraction, one line per setting.
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r, context in zip(rows, _series_contexts(rows, varying), strict=True):
        if isinstance(r.get("label_fraction"), (int, float)):
            for key in (k for k in r if k.startswith("finetune_") and not k.endswith(("_std", "_val"))):
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


def _bars(rows: list[dict[str, Any]], metric: str, folder: Path, chance: str | None) -> Path:
    """One comparison bar plot of ``metric`` over the rows that have it, labelled by what varies."""
    have = [r for r in rows if isinstance(r.get(metric), (int, float))]
    std = [r.get(f"{metric}_std") for r in have]
    if metric == "pretext_acc":
        names = sorted({str(r.get("pretext_metric")) for r in have})
        title, xlabel = (
            f"Pretext accuracy ({', '.join(names)}) against chance",
            "pretext accuracy % (last step)",
        )
    else:
        prefix = next(p for p in TITLES if metric.startswith(p))
        title, xlabel = TITLES[prefix]
        title += f": {metric}" if prefix not in ("probe_best", "gain_best") else ""
    return plots.comparison(
        varying_labels(have),
        [float(r[metric]) for r in have],
        folder / f"{metric}.png",
        title,
        xlabel if all(isinstance(s, (int, float)) for s in std) else xlabel.split(", ±")[0],
        errors=[float(s) for s in std if isinstance(s, (int, float))]
        if all(isinstance(s, (int, float)) for s in std)
        else None,
        chance=[r.get(chance) for r in have] if chance is not None else None,
    )


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
