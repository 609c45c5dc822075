"""The main job: pretrain, then evaluate the pretrained encoder against its random initialization.

The comparison is the point: a pretext task earns its compute only if its encoder beats the same
network at the same random starting weights by more than the probe's own noise (the spread over
probe seeds), on the same images, features and probes. Evaluation is whatever ``cfg.eval`` holds:
linear probes (one or many layers), kNN, fine-tuning; the run ends with metrics.json and report.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from rich.console import Console
from rich.table import Table

from selfsup.config import select
from selfsup.errors import ConfigError
from selfsup.eval.embeddings import project_2d, subsample
from selfsup.reports import plots
from selfsup.reports.report import FIGURES_DIR, write_report
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, build_encoder
from selfsup.stages.pretrain import ENCODER_DIR, INIT_ENCODER_DIR, pretrain
from selfsup.stages.probe import check_eval_config, evaluate_frozen, resolve_layers

log = logging.getLogger(__name__)


def compare(probe_results: dict[str, Any]) -> dict[str, Any]:
    """Per layer: gain of the pretrained encoder over the random one, and whether it exceeds the noise.

    The noise is the larger of the two per-seed standard deviations; a difference counts as clear when
    it exceeds twice that and the two seed ranges do not overlap. ``verdict`` is ``better``, ``worse``
    or ``within noise``.
    """
    out = {}
    for layer in probe_results["layers"]:
        pre, rnd = probe_results["pretrained"][layer], probe_results["random_init"][layer]
        gain = round(pre["top1_mean"] - rnd["top1_mean"], 2)
        noise = max(pre["top1_std"], rnd["top1_std"])
        if gain > 2 * noise and pre["top1_min"] > rnd["top1_max"]:
            verdict = "better"
        elif -gain > 2 * noise and pre["top1_max"] < rnd["top1_min"]:
            verdict = "worse"
        else:
            verdict = "within noise"
        out[layer] = {"gain": gain, "noise_std": noise, "verdict": verdict}
    best = max(probe_results["layers"], key=lambda layer: probe_results["pretrained"][layer]["top1_mean"])
    return {"layers": out, "best_layer": best, "best_gain": out[best]["gain"]}


def print_summary(results: dict[str, Any], run_dir: Path, seconds: float, console: Console) -> None:
    """The comparison as tables: probe accuracy per layer, kNN, and where the run is."""
    if "linear_probe" in results:
        probes = results["linear_probe"]
        table = Table(title="Linear probe, top-1 % on the test split (mean ± std over probe seeds)")
        for column in ("layer", "pretrained", "random init", "gain"):
            table.add_column(column, justify="right")
        for layer in probes["layers"]:
            pre, rnd = probes["pretrained"][layer], probes["random_init"][layer]
            cmp = probes["comparison"]["layers"][layer]
            table.add_row(
                layer,
                f"{pre['top1_mean']:.2f} ± {pre['top1_std']:.2f}",
                f"{rnd['top1_mean']:.2f} ± {rnd['top1_std']:.2f}",
                f"{cmp['gain']:+.2f}" + ("" if cmp["verdict"] == "better" else f" ({cmp['verdict']})"),
            )
        console.print(table)
        best = probes["comparison"]["best_layer"]
        pre, rnd = probes["pretrained"][best], probes["random_init"][best]
        console.print(
            f"best layer {best}: pretrained {pre['top1_mean']:.2f} % vs random init {rnd['top1_mean']:.2f} % "
            f"-> gain {pre['top1_mean'] - rnd['top1_mean']:+.2f} points "
            f"(probe noise ± {max(pre['top1_std'], rnd['top1_std']):.2f})"
        )
    if "knn" in results:
        knn = results["knn"]
        table = Table(
            title=f"kNN on {knn.get('layer', 'pooled')} features, top-1 % (T = {knn['temperature']})"
        )
        for column in ("k", "pretrained", "random init", "gain"):
            table.add_column(column, justify="right")
        for k in knn["ks"]:
            pre, rnd = knn["pretrained"][f"top1_k{k}"], knn["random_init"][f"top1_k{k}"]
            table.add_row(str(k), f"{pre:.2f}", f"{rnd:.2f}", f"{pre - rnd:+.2f}")
        console.print(table)
    console.print(f"total time {seconds / 60:.1f} min; run directory: {run_dir.resolve()}")


def downstream_key(cfg: DictConfig) -> str:
    """``downstream`` when a separate evaluation dataset is configured (transfer), else ``data``."""
    return "downstream" if cfg.get("downstream") is not None else "data"


def check_eval_against_encoder(cfg: DictConfig) -> None:
    """The evaluation images fit, and probe layers and ``freeze_until`` name stages of, the encoder about to be pretrained.

    Checked on a freshly built encoder before pretraining, so that a layer name from another encoder
    family (``stage3`` for a ViT) fails in a second rather than after the whole pretraining run.
    """
    encoder = build_encoder(cfg, check_image_size=False)
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
        from selfsup.stages.finetune import check_finetune_config

        check_finetune_config(cfg, encoder)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain, evaluate both encoders, write metrics.json and report.md, print the comparison.

    Evaluation runs on ``cfg.downstream`` when set (pretrain on one dataset, evaluate on another, with
    its own classes and image size: ``+data@downstream=cifar10``), else on ``cfg.data``'s labeled splits.
    Each ``cfg.eval`` section that is present runs: ``linear_probe``, ``knn``, ``finetune``.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    check_eval_config(cfg)
    check_eval_against_encoder(cfg)
    key = downstream_key(cfg)
    # Fail now, not after pretraining, if labeled data is missing or its splits disagree on the classes.
    datamodule = build_datamodule(cfg, ["train", "test"], key)
    classes = datamodule.classes()
    metrics: dict[str, Any] = {"pretrain": pretrain(cfg)}
    if getattr(rank_zero_only, "rank", 0) != 0:
        # Under DDP every rank runs this function and only rank 0 exported the encoder. Rank 0
        # evaluates alone, over the whole data (kNN votes over every training image), and writes the
        # reports; the other ranks are done.
        return metrics
    encoders = {"pretrained": run_dir / ENCODER_DIR, "random_init": run_dir / INIT_ENCODER_DIR}
    results, features = evaluate_frozen(encoders, datamodule, cfg.eval, cfg.paths.cache_dir)
    if "linear_probe" in results:
        results["linear_probe"]["comparison"] = compare(results["linear_probe"])
    for section in ("linear_probe", "knn"):
        if section in results:
            metrics[section] = results[section]
            RunDir.default(run_dir).update_metrics(section, results[section])
    RunDir.default(run_dir).update_metrics("eval_timing", results["timing"])
    if cfg.eval.get("finetune") is not None:
        from selfsup.stages.finetune import finetune_encoders

        metrics["finetune"] = finetune_encoders(encoders, datamodule, cfg.eval.finetune, run_dir)
        RunDir.default(run_dir).update_metrics("finetune", metrics["finetune"])
    seconds = time.perf_counter() - started
    metrics["total_time_s"] = round(seconds, 1)
    RunDir.default(run_dir).update_metrics("total_time_s", metrics["total_time_s"])
    write_run_report(cfg, run_dir, metrics, features, classes)
    print_summary(metrics, run_dir, seconds, Console())
    return metrics


def write_run_report(
    cfg: DictConfig,
    run_dir: Path,
    metrics: dict[str, Any],
    features: dict[str, Any],
    classes: list[str] | None = None,
) -> Path:
    """Figures (probe accuracy per layer, training curves, a 2-D map of the embeddings) and report.md.

    ``classes`` names the labels of the embedding map's legend.
    """
    folder = run_dir / FIGURES_DIR
    figures: dict[str, Path | None] = {}
    if "linear_probe" in metrics:
        figures["linear probe per layer"] = plots.probe_layers(
            metrics["linear_probe"], folder / "probe_layers.png"
        )
    figures["pretraining curves"] = plots.training_curves(run_dir, folder / "training_curves.png")
    report_cfg = cfg.get("report") or {}
    method, layer = report_cfg.get("embedding"), (cfg.eval.get("knn") or {}).get("layer", "pooled")
    if method and "pretrained" in features and layer in features["pretrained"][1].features:
        test = features["pretrained"][1]
        keep = subsample(len(test), int(report_cfg.get("max_points", 1000)), int(cfg.seed))
        points = project_2d(test.features[layer].float().numpy()[keep], method, int(cfg.seed))
        title = f"{method} of the pretrained encoder's {layer} features ({len(keep)} test images)"
        figures[f"embeddings ({method})"] = plots.embedding(
            points, test.labels.numpy()[keep], classes, folder / f"embedding_{method}.png", title
        )
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    title = (
        "Run report: " + " / ".join(str(choices.get(g, "?")) for g in ("task", "encoder", "data"))
        if choices
        else "Run report"
    )
    return write_report(run_dir, metrics, figures, title)
