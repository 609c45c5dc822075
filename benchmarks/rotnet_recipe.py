"""RotNet's recipe, one factor at a time: rotation accuracy after one epoch and the probe gain on validation.

Each setting is one run of the real main job (``selfsup``, pretraining then probes of the pretrained
encoder beside its random initialization) for one epoch of the pretraining images, with one change
from the default recipe: the crop scale, the rotation mode, the learning rate, or (on 32 px images)
upsampling to 64 px or the ResNet's small stem. What it records, per run, in
benchmarks/results/rotnet_recipe.jsonl:

- the pretext's rotation accuracy over the last quarter of the epoch (the mean of the logged training
  steps; chance is 0.25), which says how fast the recipe learns rotations;
- the linear-probe gain over random init at the configured layers, on **validation** (what chooses a
  recipe) and on test (reported only), and the kNN gain;
- images/s and the job's time.

Two datasets, so that a recipe is not chosen on the data it was tuned on: ``embedded`` (the default
data: 10k CIFAR-10 train images at 64 px) and ``cifar32`` (10k other-drawn CIFAR-10 train JPEGs at
their own 32 px, 10k/5k labeled, from ../shared/datasets/cifar10-jpg.tar.gz; see benchmarks/README.md).

    python -m benchmarks.rotnet_recipe --dataset embedded --out /tmp/selfsup-bench/recipe
    python -m benchmarks.rotnet_recipe --dataset cifar32 --out /tmp/selfsup-bench/recipe
    python -m benchmarks.rotnet_recipe --dataset cifar32 --only default lr1e-3   # some settings

A finished run (its metrics.json has the probes) is read, not run again.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import record
from selfsup.eval.results import KnnResults, ProbeResults
from selfsup.eval.stats import compare
from selfsup.reports.report import markdown_table
from selfsup.run_dir import RunDir

CIFAR_JPEG = Path("~/.cache/selfsup/cifar10-jpg").expanduser()

DATASETS: dict[str, list[str]] = {
    "embedded": [],
    "cifar32": [
        "data=imagefolder",
        f"data.path={CIFAR_JPEG}",
        "data.image_size=32",
        "data.max_images=10000",
        "data.max_train_images=10000",
        "data.max_test_images=5000",
    ],
}

# One change each from the default recipe (conf/task/rotnet.yaml, conf/data/*.yaml, conf/optim).
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "crop0.08": ["data.crop_scale=[0.08,1.0]"],
    "crop1.0": ["data.crop_scale=[1.0,1.0]"],
    "all_rotations": ["task.rotations=all"],
    "lr1e-3": ["optim.lr=1e-3"],
    "lr4e-3": ["optim.lr=4e-3"],
    "64px": ["data.image_size=64"],
    "small_stem": ["encoder.cifar_stem=true"],
    # the two changes that learned rotations fastest / probed best after one epoch at 32 px, together
    "64px_crop1.0": ["data.image_size=64", "data.crop_scale=[1.0,1.0]"],
}
# Settings about the 32 px images' resolution: the embedded default is already 64 px.
ONLY_AT_32PX = {"64px", "small_stem", "64px_crop1.0"}

# One epoch of the pretraining images, whatever their number; no t-SNE (not measured here).
BUDGET = ["trainer.max_epochs=1", "trainer.max_steps=-1", "report.embedding=null"]

HEADER = [
    "setting",
    "rotation acc % (last 1/4 of epoch)",
    "images/s",
    "val gain stage2",
    "val gain stage3",
    "test gain stage2",
    "test gain stage3",
    "kNN k=200 gain (test)",
    "job s",
]


def run_job(run_dir: Path, overrides: list[str]) -> float:
    """Run the main job into ``run_dir``; its wall-clock seconds. Raises with the job's last lines on failure."""
    command = [str(Path(sys.executable).parent / "selfsup"), f"hydra.run.dir={run_dir}", *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return round(time.perf_counter() - started, 1)


def late_rotation_accuracy(run: RunDir) -> float:
    """Mean logged training rotation accuracy over the last quarter of the logged steps."""
    path = next(run.root.glob("logs/version_*/metrics.csv"))
    with open(path) as f:
        values = [
            float(row["train/rotation_acc"]) for row in csv.DictReader(f) if row.get("train/rotation_acc")
        ]
    if not values:
        raise RuntimeError(f"{path}: no train/rotation_acc logged")
    tail = values[-max(1, len(values) // 4) :]
    return round(sum(tail) / len(tail), 4)


def gains(probe: ProbeResults, split: str) -> dict[str, float]:
    """Pretrained minus random-init mean top-1 per layer, on ``split`` (val or test)."""
    pre, rnd = probe.encoders["pretrained"].layers, probe.encoders["random_init"].layers
    out = {}
    for layer in pre:
        a, b = (pre[layer].val, rnd[layer].val) if split == "val" else (pre[layer].top1, rnd[layer].top1)
        if a is not None and b is not None:
            out[layer] = round(compare(a, b).gain, 2)
    return out


def summarize(name: str, run: RunDir, job_s: float | None) -> dict[str, Any]:
    """The line to record for one finished run."""
    metrics = run.read_metrics()
    probe = ProbeResults.from_dict(metrics["linear_probe"])
    knn = KnnResults.from_dict(metrics["knn"]) if "knn" in metrics else None
    pretrain = metrics["pretrain"]
    return {
        "setting": name,
        "run_dir": str(run.root),
        "rotation_acc_last_quarter": late_rotation_accuracy(run),
        "pretrain": {
            k: pretrain.get(k) for k in ("steps", "epochs", "time_s", "images_per_s", "rotation_acc")
        },
        "val_gain": gains(probe, "val"),
        "test_gain": gains(probe, "test"),
        "knn_gain": None if knn is None else knn.gains(),
        "job_s": job_s if job_s is not None else metrics.get("total_time_s"),
    }


def table_row(line: dict[str, Any]) -> list[Any]:
    val, test, knn = line["val_gain"], line["test_gain"], line["knn_gain"] or {}
    return [
        line["setting"],
        round(100 * line["rotation_acc_last_quarter"], 1),
        line["pretrain"]["images_per_s"],
        val.get("stage2"),
        val.get("stage3"),
        test.get("stage2"),
        test.get("stage3"),
        None if 200 not in knn else round(knn[200], 2),
        line["job_s"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="embedded")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="these settings (default: all)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/selfsup-bench/recipe"))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    args = parser.parse_args()
    rows = []
    for name in args.only or SETTINGS:
        if name in ONLY_AT_32PX and args.dataset == "embedded":
            continue
        run_dir = args.out / args.dataset / name
        job_s = None
        if (
            not (run_dir / "metrics.json").exists()
            or "linear_probe" not in RunDir.open(run_dir).read_metrics()
        ):
            job_s = run_job(run_dir, [*DATASETS[args.dataset], *SETTINGS[name], *BUDGET, *args.set])
        line = {
            "dataset": args.dataset,
            "extra_overrides": args.set,
            **summarize(name, RunDir.open(run_dir), job_s),
        }
        if job_s is not None:
            record("rotnet_recipe", line)
        rows.append(table_row(line))
        print(markdown_table(HEADER, rows[-1:]), flush=True)
    print(f"\n{args.dataset}, one epoch per setting:\n" + markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()
