"""Fine-tune accuracy of a pretrained encoder against its random initialization: label fractions x freezing.

For each label fraction and each ``freeze_until`` setting, both exports of one pretraining run
(``<run>/encoder`` and ``<run>/encoder_init``) are fine-tuned with the same label subsets, seeds and
fixed step budget (``eval.finetune.max_steps``) through the fine-tuning stage itself
(``selfsup.stages.finetune.finetune_encoders``), and tested on the test split. Each setting is one
line of benchmarks/results/finetune_accuracy.jsonl; the table at the end is what benchmarks/finetune.md
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
from selfsup.encoders import export
from selfsup.stages.components import build_datamodule, setup_runtime
from selfsup.stages.finetune import check_finetune_config, finetune_encoders
from selfsup.stages.pretrain import ENCODER_DIR, INIT_ENCODER_DIR


def measure(run: Path, fraction: float, freeze_until: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the run's pretrained and random-init encoders at one setting; the stage's results."""
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
    encoders = {"pretrained": run / ENCODER_DIR, "random_init": run / INIT_ENCODER_DIR}
    started = time.perf_counter()
    results = finetune_encoders(encoders, datamodule, cfg.eval.finetune, run_dir)
    return {"overrides": overrides, "seconds": round(time.perf_counter() - started, 1), "finetune": results}


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
    encoder_meta = export.read_spec(args.run / ENCODER_DIR).get("meta", {})
    rows = []
    for fraction in args.fractions:
        for freeze_until in args.freeze:
            result = measure(args.run, fraction, freeze_until, args)
            record("finetune_accuracy", {"run": str(args.run), "encoder_meta": encoder_meta, **result})
            ft = result["finetune"]
            rows.append(
                f"| {fraction:g} | {freeze_until} | {ft['pretrained']['train_images']} "
                f"| {ft['pretrained']['top1_mean']:.2f} | {ft['random_init']['top1_mean']:.2f} "
                f"| {ft['pretrained']['top1_mean'] - ft['random_init']['top1_mean']:+.2f} | {result['seconds']:.0f} |"
            )
            print(rows[-1], flush=True)
    print("| labels | freeze_until | train images | pretrained | random init | gain | seconds |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
