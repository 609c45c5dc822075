"""The main job: pretrain, then evaluate the pretrained encoder against its random initialization.

The comparison is the point: a pretext task earns its compute only if its encoder beats the same
network at the same random starting weights by more than the probe's own noise (the spread over
probe seeds), on the same images, features and probes. Evaluation is whatever ``cfg.eval`` holds:
linear probes (one or many layers), kNN, fine-tuning; the run ends with metrics.json and report.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from rich.console import Console
from rich.table import Table as RichTable

from selfsup.config import check_eval_config, check_finetune_config, check_projection, select
from selfsup.data.datamodule import ImageDataModule
from selfsup.errors import ConfigError
from selfsup.eval.embeddings import project_2d, subsample
from selfsup.eval.results import KnnResults, ProbeResults
from selfsup.reports import plots, published
from selfsup.reports.report import Table, cell, knn_table, probe_table, probe_title, write_report
from selfsup.reports.summary import headline_metrics
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, build_pretext_encoder
from selfsup.stages.pretrain import first_process, pretrain
from selfsup.stages.probe import evaluate_frozen, resolve_layers

log = logging.getLogger(__name__)

# The main job's two encoders: the pretrained one and the same network at its random initialization.
PRETRAINED, RANDOM_INIT = "pretrained", "random_init"


def rich_table(title: str, table: Table) -> RichTable:
    """One of :mod:`selfsup.reports.report`'s tables for the console, cells formatted as in report.md."""
    header, rows = table
    out = RichTable(title=title)
    for column in header:
        out.add_column(column, justify="right")
    for row in rows:
        out.add_row(*(cell(v) for v in row))
    return out


def print_summary(metrics: dict[str, Any], run_dir: Path, seconds: float, console: Console) -> None:
    """The comparison as tables (probe accuracy per layer, kNN), the best layer, and where the run is.

    ``metrics`` as metrics.json holds them.
    """
    if metrics.get("linear_probe"):
        probe = ProbeResults.from_dict(metrics["linear_probe"])
        splits = "validation and test splits" if probe.has_validation() else "test split"
        console.print(
            rich_table(
                f"{probe_title(probe)}, top-1 % on the {splits} (mean ± std over probe seeds)",
                probe_table(probe),
            )
        )
        if probe.comparison is not None:
            console.print(comparison_line(probe))
    if metrics.get("knn"):
        knn = KnnResults.from_dict(metrics["knn"])
        console.print(
            rich_table(f"kNN on {knn.layer} features, top-1 % (T = {knn.temperature})", knn_table(knn))
        )
    console.print(f"total time {seconds / 60:.1f} min; run directory: {run_dir.resolve()}")


def comparison_line(probe: ProbeResults) -> str:
    """The gain at each probed layer (fixed by the config), and the layer validation chose, if any."""
    c = probe.comparison
    assert c is not None
    gains = ", ".join(f"{layer} {g.gain:+.2f}" for layer, g in c.layers.items())
    noise = max(g.noise_std for g in c.layers.values())
    text = f"gain on test ({c.encoder.replace('_', ' ')} - {c.baseline.replace('_', ' ')}): {gains} points (probe noise ± {noise:.2f})"
    if c.best_layer is None:
        return text + "; no validation split, so no best layer is chosen"
    mine = probe.encoders[c.encoder].layers[c.best_layer]
    assert mine.val is not None
    return (
        text
        + f"; best layer on validation: {c.best_layer} ({mine.val.mean:.2f} % val, {mine.top1.mean:.2f} % test)"
    )


def downstream_key(cfg: DictConfig) -> str:
    """``downstream`` when a separate evaluation dataset is configured (transfer), else ``data``."""
    return "downstream" if cfg.get("downstream") is not None else "data"


def check_evaluation(cfg: DictConfig) -> tuple[ImageDataModule, list[str]]:
    """Every check of the evaluation half, before pretraining: settings, layers, projection, labeled data.

    Fails now, not after pretraining, if labeled data is missing or its splits disagree on the
    classes. Returns the labeled data and its classes. A sweep's up-front check calls it too.
    """
    check_eval_config(cfg)
    # A malformed list of the paper's numbers fails now, not in the report after training.
    published.check_published(cfg, HydraConfig.get().runtime.choices if HydraConfig.initialized() else {})
    check_eval_against_encoder(cfg)
    check_projection(cfg, "report.embedding", "report.max_points")
    datamodule = build_datamodule(cfg, ["train", "test"], downstream_key(cfg))
    return datamodule, datamodule.classes()


def check_eval_against_encoder(cfg: DictConfig) -> None:
    """The evaluation images fit, and probe layers and ``freeze_until`` name stages of, the encoder about to be pretrained.

    Checked on a freshly built encoder before pretraining, so that a layer name from another encoder
    family (``stage3`` for a ViT) fails in a second rather than after the whole pretraining run.
    """
    encoder = build_pretext_encoder(cfg)  # as pretraining will build it
    key = downstream_key(cfg)
    try:
        encoder.check_image_size(int(select(cfg, f"{key}.image_size")))
    except ValueError as e:
        raise ConfigError(f"{key}.image_size", f"the evaluation images do not fit the encoder: {e}") from None
    if cfg.eval.get("linear_probe") is not None:
        resolve_layers(cfg.eval.linear_probe.layers, encoder)
    if cfg.eval.get("knn") is not None:
        resolve_layers([cfg.eval.knn.layer], encoder, key="eval.knn.layer")
    if cfg.eval.get("finetune") is not None:
        check_finetune_config(cfg, encoder)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain, evaluate both encoders, write metrics.json and report.md, print the comparison.

    Evaluation runs on ``cfg.downstream`` when set (pretrain on one dataset, evaluate on another, with
    its own classes and image size: ``+data@downstream=cifar10``), else on ``cfg.data``'s labeled splits.
    Each ``cfg.eval`` section that is present runs: ``linear_probe``, ``knn``, ``finetune``.
    """
    started = time.perf_counter()
    run_dir = RunDir.from_config(cfg)
    datamodule, classes = check_evaluation(cfg)
    # One process writes the run directory from pretraining to the report (pretrain re-enters the lock).
    with run_dir.locked() if first_process() else contextlib.nullcontext():
        return _pretrain_and_evaluate(cfg, run_dir, datamodule, classes, started)


def _pretrain_and_evaluate(
    cfg: DictConfig, run_dir: RunDir, datamodule: Any, classes: list[str], started: float
) -> dict[str, Any]:
    """:func:`run` once its checks passed, holding the run directory's lock."""
    metrics: dict[str, Any] = {"pretrain": pretrain(cfg)}
    if getattr(rank_zero_only, "rank", 0) != 0:
        # Under DDP every rank runs this function and only rank 0 exported the encoder. Rank 0
        # evaluates alone, over the whole data (kNN votes over every training image), and writes the
        # reports; the other ranks are done.
        return metrics
    encoders = {PRETRAINED: run_dir.encoder, RANDOM_INIT: run_dir.encoder_init}
    results, features = evaluate_frozen(encoders, datamodule, cfg.eval, cfg.paths.cache_dir)
    if results.probe is not None:
        results = replace(results, probe=results.probe.compared(PRETRAINED, RANDOM_INIT))
    if results.knn is not None:
        results = replace(results, knn=replace(results.knn, versus=(PRETRAINED, RANDOM_INIT)))
    for section, values in results.sections().items():
        if section != "eval_timing":
            metrics[section] = values
        run_dir.update_metrics(section, values)
    if cfg.eval.get("finetune") is not None:
        from selfsup.stages.finetune import finetune_encoders

        metrics["finetune"] = finetune_encoders(encoders, datamodule, cfg.eval.finetune, run_dir).to_dict()
        run_dir.update_metrics("finetune", metrics["finetune"])
    seconds = time.perf_counter() - started
    metrics["total_time_s"] = round(seconds, 1)
    run_dir.update_metrics("total_time_s", metrics["total_time_s"])
    write_run_report(cfg, run_dir, metrics, features, classes)
    print_summary(metrics, run_dir.root, seconds, Console())
    return metrics


def write_run_report(
    cfg: DictConfig,
    run_dir: RunDir,
    metrics: dict[str, Any],
    features: dict[str, Any],
    classes: list[str] | None = None,
) -> Path:
    """Figures (probe accuracy per layer, training curves, a 2-D map of the embeddings) and report.md.

    ``metrics`` as metrics.json holds them; ``classes`` names the labels of the embedding map's legend.
    """
    folder = run_dir.figures
    figures: dict[str, Path | None] = {}
    if metrics.get("linear_probe"):
        probe = ProbeResults.from_dict(metrics["linear_probe"])
        figures[f"{probe_title(probe).lower()} per layer"] = plots.probe_layers(
            probe,
            folder / "probe_layers.png",
            (PRETRAINED, RANDOM_INIT),
        )
    figures["pretraining curves"] = plots.training_curves(run_dir.csv_logs(), folder / "training_curves.png")
    method = cfg.report.embedding
    # The map shows the features kNN reads, or the pooled output when kNN does not run.
    layer = cfg.eval.knn.layer if cfg.eval.get("knn") is not None else "pooled"
    if method is not None and PRETRAINED in features and layer in features[PRETRAINED]["test"].features:
        test = features[PRETRAINED]["test"]
        keep = subsample(len(test), int(cfg.report.max_points), int(cfg.seed))
        points = project_2d(test.features[layer].float().numpy()[keep], method, int(cfg.seed))
        title = f"{method} of the pretrained encoder's {layer} features ({len(keep)} test images)"
        figures[f"embeddings ({method})"] = plots.embedding(
            points, test.labels.numpy()[keep], classes, folder / f"embedding_{method}.png", title
        )
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    choices = dict(hydra.runtime.choices) if hydra is not None else {}
    title = (
        "Run report: " + " / ".join(str(choices.get(g, "?")) for g in ("task", "encoder", "data"))
        if choices
        else "Run report"
    )
    this_run = published.PublishedRun(
        "this run",
        headline_metrics(metrics),
        list(hydra.overrides.task) if hydra is not None else [],
        choices,
        published.matching(cfg, choices),
    )
    return write_report(run_dir, metrics, figures, title, published.section([this_run]))
