"""RotNet's Network-in-Network on a CPU budget: the paper's non-linear classifier on every block.

One run of the real main job (``selfsup``): the paper's protocol (``experiment=rotnet_nin_paper``:
NIN-4, all four rotations, SGD 0.1, padded crop) pretrained for a fixed number of minutes
(``trainer.max_time``) on CIFAR-10 JPEGs at 32 px, then ``eval=rotnet_nonlinear`` (the paper's
non-linear classifier on each block's whole map, trained on augmented images through the frozen
encoder, SGD with the paper's step schedule shortened to ``--probe-epochs``) on the pretrained encoder
and on its random initialization. Gidaris et al.'s Table 1 shape, after 100 GPU epochs: block 2 best,
the last block worst. What a few CPU minutes give is recorded in benchmarks/results/rotnet_nin_blocks.jsonl;
the layer to report is read on validation, test is only reported.

    python -m benchmarks.rotnet_nin_blocks --minutes 20 --out /tmp/selfsup-bench/nin
    python -m benchmarks.rotnet_nin_blocks --minutes 20 --set data.batch_size=32   # 4x the SGD steps
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import compose_cfg, record
from benchmarks.rotnet_recipe import CIFAR_JPEG, late_rotation_accuracy, run_job
from selfsup.eval.results import ProbeResults
from selfsup.reports.published import matching
from selfsup.reports.report import markdown_table
from selfsup.run_dir import RunDir

BLOCKS = ["block1", "block2", "block3", "block4"]
HEADER = [
    "block", "val pretrained", "val random", "val gain", "test pretrained", "test random", "test gain",
    "paper (100 epochs, test)",
]  # fmt: skip


def overrides(minutes: int, images: int, labeled: int, probe_epochs: int) -> list[str]:
    return [
        "experiment=rotnet_nin_paper",
        "data=imagefolder",
        f"data.path={CIFAR_JPEG}",
        "data.image_size=32",
        f"data.max_images={images}",
        f"data.max_train_images={labeled}",
        f"data.max_test_images={labeled // 2}",
        f"trainer.max_time=00:00:{minutes:02d}:00",
        "eval=rotnet_nonlinear",
        f"eval.linear_probe.layers=[{','.join(BLOCKS)}]",
        f"eval.linear_probe.epochs={probe_epochs}",
        "report.embedding=null",
    ]


def paper_numbers() -> dict[str, float]:
    """Table 1's 4-block row, as the preset lists it (``published``): column ``probe_<block>`` -> %."""
    cfg = compose_cfg(["experiment=rotnet_nin_paper", "eval=rotnet_nonlinear"], "pipeline")
    return matching(cfg, {"eval": "rotnet_nonlinear"})[0].numbers


def rows(probe: ProbeResults) -> list[list[object]]:
    pre, rnd = probe.encoders["pretrained"].layers, probe.encoders["random_init"].layers
    paper = paper_numbers()
    out = []
    for block in BLOCKS:
        a, b = pre[block], rnd[block]
        assert a.val is not None and b.val is not None, "the data has a validation split"
        va, vb, ta, tb = a.val.mean, b.val.mean, a.top1.mean, b.top1.mean
        out.append(
            [
                block,
                round(va, 2),
                round(vb, 2),
                round(va - vb, 2),
                round(ta, 2),
                round(tb, 2),
                round(ta - tb, 2),
                paper[f"probe_{block}"],
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=20, help="pretraining budget")
    parser.add_argument("--images", type=int, default=10000, help="pretraining images")
    parser.add_argument("--labeled", type=int, default=5000, help="labeled train images (test: half)")
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/selfsup-bench/nin"))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. data.batch_size=32")
    args = parser.parse_args()
    settings = [*overrides(args.minutes, args.images, args.labeled, args.probe_epochs), *args.set]
    job_s = run_job(args.out, settings)
    run = RunDir.open(args.out)
    metrics = run.read_metrics()
    probe = ProbeResults.from_dict(metrics["linear_probe"])
    table = rows(probe)
    pretrain = metrics["pretrain"]
    record(
        "rotnet_nin_blocks",
        {
            "overrides": settings,
            "run_dir": str(args.out),
            "pretrain": {k: pretrain.get(k) for k in ("steps", "epochs", "time_s", "images_per_s")},
            "rotation_acc_last_quarter": late_rotation_accuracy(run),
            "blocks": {row[0]: dict(zip(HEADER[1:], row[1:], strict=True)) for row in table},
            "job_s": job_s,
        },
    )
    print(markdown_table(HEADER, table))


if __name__ == "__main__":
    main()
