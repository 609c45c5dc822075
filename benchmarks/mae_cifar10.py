"""MAE on the CIFAR-10 JPEGs for a fixed CPU budget, then linear probes: pretrained against random init.

This is the main job (``selfsup``, conf/pipeline.yaml) with ``experiment=mae_cifar10`` and the
budget's overrides, run in-process: pretraining, export, then the linear probe of the pretrained ViT
and of the same ViT at its random initialization (3 probe seeds each). Everything ``run`` returns
(pretraining throughput and loss, probe accuracies per seed) is appended to
benchmarks/results/mae_cifar10.jsonl with the overrides; the run directory keeps the reconstruction
grids.

    python -m benchmarks.mae_cifar10 --set trainer.max_steps=300 data.batch_size=128
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import compose_cfg, record
from selfsup.stages.pipeline import run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="Hydra overrides on top of experiment=mae_cifar10"
    )
    parser.add_argument(
        "--run-dir", default=f"outputs/bench/mae_cifar10_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    )
    args = parser.parse_args()
    overrides = ["experiment=mae_cifar10", "callbacks.progress_bar=null", *args.set]
    cfg = compose_cfg(overrides, config_name="pipeline", run_dir=args.run_dir)
    started = time.perf_counter()
    metrics = run(cfg)
    result = {
        "overrides": overrides,
        "run_dir": args.run_dir,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = record("mae_cifar10", {**result, "metrics": metrics})
    print(json.dumps(metrics, indent=1, default=str))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
