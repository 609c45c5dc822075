"""Fine-tune accuracy of a pretrained encoder against its random initialization: label fractions x freezing.

For each label fraction and each ``freeze_until`` setting, both exports of one pretraining run
(``<run>/encoder`` and ``<run>/encoder_init``) are fine-tuned with the same label subsets, seeds and
fixed step budget (``eval.finetune.max_steps``) through the fine-tuning stage itself
(``selfsup.stages.finetune.finetune_encoders``), and scored on the validation split (what chooses a
setting, e.g. ``eval.finetune.encoder_lr``) and the test split (reported only). Each setting is one
line of benchmarks/results/finetune_accuracy.jsonl; the table at the end is what benchmarks/README.md
shows. The same numbers come from a sweep of the command:
``selfsup-finetune -m +encoders.pretrained=<run>/encoder +encoders.random_init=<run>/encoder_init
eval.finetune.freeze_until=null,stage3 eval.finetune.label_fraction=0.01,0.1,1.0 ...``.

    python -m benchmarks.finetune_accuracy --run outputs/runs/<rotnet run> --steps 300 \
        --set data=imagefolder data.path=$HOME/.cache/selfsup/cifar10-jpg data.image_size=32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import compose_cfg, record
from selfsup.config import check_finetune_config
from selfsup.encoders import export
from selfsup.eval.results import FinetuneResults
from selfsup.eval.stats import compare
from selfsup.reports.report import markdown_table
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_datamodule, setup_runtime
from selfsup.stages.finetune import finetune_encoders

HEADER = [
    "labels",
    "freeze_until",
    "train images",
    "pretrained val",
    "random init val",
    "val gain",
    "pretrained",
    "random init",
    "gain",
    "seconds",
]


def measure(
    run: RunDir, fraction: float, freeze_until: str, args: argparse.Namespace
) -> tuple[FinetuneResults, dict[str, Any]]:
    """Fine-tune the run's pretrained and random-init encoders at one setting: the stage's results and the line to record."""
    overrides = [
        *args.set,
        f"eval.finetune.label_fraction={fraction}",
        f"eval.finetune.freeze_until={freeze_until}",
        f"eval.finetune.max_steps={args.steps}",
        f"eval.finetune.seeds=[{','.join(map(str, args.seeds))}]",
        "eval.finetune.progress_bar=false",
    ]
    run_dir = Path(args.out) / f"freeze-{freeze_until}_labels-{fraction}"
    cfg = compose_cfg(overrides, config_name="finetune", run_dir=run_dir)
    check_finetune_config(cfg)
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["train", "test"])
    encoders = {"pretrained": run.encoder, "random_init": run.encoder_init}
    started = time.perf_counter()
    results = finetune_encoders(encoders, datamodule, cfg.eval.finetune, RunDir.default(run_dir))
    seconds = round(time.perf_counter() - started, 1)
    return results, {"overrides": overrides, "seconds": seconds, "finetune": results.to_dict()}


def table_row(fraction: float, freeze_until: str, results: FinetuneResults, seconds: float) -> list[Any]:
    """One line of the table: the setting, both encoders' validation and test top-1 and the gains."""
    pre, rnd = results.encoders["pretrained"], results.encoders["random_init"]
    gain = compare(pre.top1, rnd.top1).gain
    val = [None, None, None]
    if pre.val is not None and rnd.val is not None:
        val = [pre.val.mean, rnd.val.mean, f"{compare(pre.val, rnd.val).gain:+.2f}"]
    return [
        f"{fraction:g}",
        freeze_until,
        pre.train_images,
        *val,
        pre.top1.mean,
        rnd.top1.mean,
        f"{gain:+.2f}",
        f"{seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="pretraining run directory (encoder/, encoder_init/)"
    )
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per fine-tuning run")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--freeze", nargs="+", default=["null", "stage3"], help="freeze_until values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="/tmp/selfsup-bench/finetune", help="fine-tuning logs go here")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (data, batch size, ...)")
    args = parser.parse_args()
    run = RunDir.default(args.run)
    encoder_meta = export.read_spec(run.encoder).get("meta", {})
    rows = []
    for fraction in args.fractions:
        for freeze_until in args.freeze:
            results, line = measure(run, fraction, freeze_until, args)
            record("finetune_accuracy", {"run": str(args.run), "encoder_meta": encoder_meta, **line})
            rows.append(table_row(fraction, freeze_until, results, line["seconds"]))
            print(markdown_table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
    print(markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()
