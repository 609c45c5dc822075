"""Jigsaw: record what a main-job run (`selfsup experiment=jigsaw_cifar10 ...`) measured.

The run itself is the ordinary command (benchmarks/README.md has the exact one); this script reads its
run directory (metrics.json and the Hydra overrides), appends one line to
benchmarks/results/jigsaw_accuracy.jsonl and prints the linear-probe comparison per layer.

    python -m benchmarks.jigsaw_accuracy outputs/jigsaw/run1 [more run directories]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import record
from selfsup.eval.results import ProbeResults
from selfsup.eval.stats import compare
from selfsup.reports.report import markdown_table, probe_table
from selfsup.run_dir import RunDir


def summary(run_dir: Path) -> tuple[ProbeResults, dict[str, Any]]:
    """The run's probe results, and the line to record: the pretraining numbers and, per probed layer,
    pretrained vs random-init top-1 with the seed spread and the gain."""
    run = RunDir.open(run_dir)
    metrics = run.read_metrics()
    overrides = yaml.safe_load((run.hydra_dir / "overrides.yaml").read_text())
    probe = ProbeResults.from_dict(metrics["linear_probe"])
    pre, rnd = probe.encoders["pretrained"].layers, probe.encoders["random_init"].layers
    gains = probe.comparison.layers if probe.comparison is not None else {}
    layers = {
        layer: {
            "pretrained": [pre[layer].top1.mean, pre[layer].top1.std],
            "random_init": [rnd[layer].top1.mean, rnd[layer].top1.std],
            "gain": gains[layer].gain if layer in gains else compare(pre[layer].top1, rnd[layer].top1).gain,
        }
        for layer in pre
        if layer in rnd
    }
    pretrain = metrics["pretrain"]
    line = {
        "run_dir": str(run_dir),
        "overrides": overrides,
        "pretrain": {
            k: pretrain.get(k) for k in ("steps", "time_s", "images_per_s", "loss", "jigsaw_acc", "tile_acc")
        },
        "probe_seeds": list(probe.seeds),
        "linear_probe_top1_mean_std": layers,
        "knn": metrics.get("knn"),
    }
    return probe, line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        probe, line = summary(run_dir)
        path = record("jigsaw_accuracy", line)
        print(f"{run_dir}: {line['pretrain']}  -> {path}")
        print(markdown_table(*probe_table(probe)))


if __name__ == "__main__":
    main()
