"""Jigsaw: record what a main-job run (`selfsup experiment=jigsaw_cifar10 ...`) measured.

The run itself is the ordinary command (benchmarks/jigsaw.md has the exact one); this script reads its
run directory (metrics.json and the Hydra overrides), appends one line to
benchmarks/results/jigsaw_accuracy.jsonl and prints the linear-probe comparison per layer.

    python -m benchmarks.jigsaw_accuracy outputs/jigsaw/run1 [more run directories]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import record


def summary(run_dir: Path) -> dict[str, Any]:
    """The pretraining numbers and, per probed layer, pretrained vs random-init top-1 with the seed spread."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    probe = metrics["linear_probe"]
    layers = {
        layer: {
            "pretrained": [probe["pretrained"][layer]["top1_mean"], probe["pretrained"][layer]["top1_std"]],
            "random_init": [
                probe["random_init"][layer]["top1_mean"],
                probe["random_init"][layer]["top1_std"],
            ],
            "gain": round(
                probe["pretrained"][layer]["top1_mean"] - probe["random_init"][layer]["top1_mean"], 2
            ),
        }
        for layer in probe["layers"]
    }
    pretrain = metrics["pretrain"]
    return {
        "run_dir": str(run_dir),
        "overrides": overrides,
        "pretrain": {
            k: pretrain.get(k) for k in ("steps", "time_s", "images_per_s", "loss", "jigsaw_acc", "tile_acc")
        },
        "probe_seeds": probe["seeds"],
        "linear_probe_top1_mean_std": layers,
        "knn": metrics.get("knn"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        result = summary(run_dir)
        path = record("jigsaw_accuracy", result)
        print(f"{run_dir}: {result['pretrain']}  -> {path}")
        print("| layer | pretrained | random init | gain |\n|---|---|---|---|")
        for layer, row in result["linear_probe_top1_mean_std"].items():
            (pre, pre_std), (rnd, rnd_std) = row["pretrained"], row["random_init"]
            print(f"| {layer} | {pre:.2f} ± {pre_std:.2f} | {rnd:.2f} ± {rnd_std:.2f} | {row['gain']:+.2f} |")


if __name__ == "__main__":
    main()
