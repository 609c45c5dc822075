"""The main job: pretrain, then linear-probe the pretrained encoder against its random initialization.

The comparison is the point: a pretext task earns its compute only if its encoder beats the same
network at the same random starting weights by more than the probe's own noise (the spread over
probe seeds), on the same images, features and probe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from selfsup.stages.components import build_datamodule
from selfsup.stages.pretrain import ENCODER_DIR, INIT_ENCODER_DIR, pretrain
from selfsup.stages.probe import check_probe_config, probe_encoders
from selfsup.stages.run_dir import update_metrics

log = logging.getLogger(__name__)


def compare(probe_results: dict[str, Any]) -> dict[str, Any]:
    """Per layer: gain of the pretrained encoder over the random one, and whether it exceeds the noise.

    The noise is the larger of the two per-seed standard deviations; a gain counts as clear when it
    exceeds twice that (and the two seed ranges do not overlap).
    """
    out = {}
    for layer in probe_results["layers"]:
        pre, rnd = probe_results["pretrained"][layer], probe_results["random_init"][layer]
        gain = round(pre["top1_mean"] - rnd["top1_mean"], 2)
        noise = max(pre["top1_std"], rnd["top1_std"])
        out[layer] = {
            "gain": gain,
            "noise_std": noise,
            "clear": gain > 2 * noise and pre["top1_min"] > rnd["top1_max"],
        }
    return out


def print_summary(
    results: dict[str, Any], comparison: dict[str, Any], run_dir: Path, seconds: float, console: Console
) -> None:
    table = Table(title="Linear probe, top-1 % on the test split (mean ± std over probe seeds)")
    for column in ("layer", "pretrained", "random init", "gain"):
        table.add_column(column, justify="right")
    for layer in results["layers"]:
        pre, rnd, cmp = results["pretrained"][layer], results["random_init"][layer], comparison[layer]
        table.add_row(
            layer,
            f"{pre['top1_mean']:.2f} ± {pre['top1_std']:.2f}",
            f"{rnd['top1_mean']:.2f} ± {rnd['top1_std']:.2f}",
            f"{cmp['gain']:+.2f}" + ("" if cmp["clear"] else " (within noise)"),
        )
    console.print(table)
    console.print(f"total time {seconds / 60:.1f} min; run directory: {run_dir.resolve()}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Pretrain, probe both encoders, write metrics.json, print the comparison; returns all metrics."""
    started = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    check_probe_config(cfg)
    build_datamodule(cfg, ["train", "test"])  # fail now, not after pretraining, if probe data is missing
    metrics: dict[str, Any] = {"pretrain": pretrain(cfg)}
    datamodule = build_datamodule(cfg, ["train", "test"])
    encoders = {"pretrained": run_dir / ENCODER_DIR, "random_init": run_dir / INIT_ENCODER_DIR}
    metrics["linear_probe"] = probe_encoders(encoders, datamodule, cfg.eval.linear_probe, cfg.paths.cache_dir)
    metrics["linear_probe"]["comparison"] = compare(metrics["linear_probe"])
    seconds = time.perf_counter() - started
    update_metrics(run_dir, "linear_probe", metrics["linear_probe"])
    update_metrics(run_dir, "total_time_s", round(seconds, 1))
    print_summary(metrics["linear_probe"], metrics["linear_probe"]["comparison"], run_dir, seconds, Console())
    return metrics
