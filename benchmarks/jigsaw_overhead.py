"""Jigsaw: what puzzle making costs next to the whole training step.

Full step: the real Lightning training loop (JPEG decoding and cropping in the data workers, puzzles on
the device, the encoder on all 9B tiles, head, loss, logging, optimizer, LR schedule), timed between
consecutive batch ends. Puzzle making: ``Jigsaw.puzzles`` alone (tiling, channel jitter, grayscale,
per-tile normalization, shuffling, label draws) on a batch of the same images, median over repeats.
Bare step: tile encoder and head forward, backward and optimizer step on ready-made tiles, nothing else.

Reported: puzzle making as a fraction of the full step (the goal: at most 5 %), and everything the
framework adds on top of the bare step, 1 - full / bare (in puzzles per second).

    python -m benchmarks.jigsaw_overhead                     # the jigsaw_cifar10 experiment as configured
    python -m benchmarks.jigsaw_overhead --set data.image_size=64 task.tile_size=18
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import StepTimer, compose_cfg, median_step_seconds, record
from selfsup.stages.components import build_datamodule, build_pretraining, setup_runtime
from selfsup.tasks.jigsaw import Jigsaw
from selfsup.training.optim import build_optimizer
from selfsup.training.trainer import build_trainer

NO_EXTRAS = [
    "logger=none",
    "callbacks.progress_bar=null",
    "callbacks.last_checkpoint=null",
    "callbacks.periodic_checkpoint=null",
    "task.report_puzzles=0",
]


def full_step(overrides: list[str], steps: int, warmup: int) -> float:
    """Seconds per step of the whole Lightning training step."""
    cfg = compose_cfg(
        [*overrides, *NO_EXTRAS, f"trainer.max_steps={warmup + steps}", "trainer.max_epochs=1000"]
    )
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    task = build_pretraining(cfg).task
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, enable_progress_bar=False, enable_model_summary=False)
    trainer.callbacks.append(timer)
    trainer.fit(task, datamodule=datamodule)
    return timer.seconds_per_step()


def puzzle_and_bare_step(overrides: list[str], steps: int, warmup: int, repeats: int) -> tuple[float, float]:
    """Seconds per batch of puzzle making alone, and of the bare encoder + head step on its tiles."""
    cfg = compose_cfg([*overrides, *NO_EXTRAS])
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    task = build_pretraining(cfg).task
    assert isinstance(task, Jigsaw), "this benchmark measures task=jigsaw"
    images = datamodule.prepare_batch(next(iter(datamodule.train_dataloader())))["image"]
    puzzle_times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        puzzles = task.puzzles(images)
        if i >= warmup:
            puzzle_times.append(time.perf_counter() - started)
    optimizer = build_optimizer(torch.optim.AdamW, [task.encoder, *task.heads()], lr=1e-3, weight_decay=0.05)
    task.train()
    loss_fn = lambda: task.solve(puzzles.tiles).logsumexp(dim=1).mean()  # noqa: E731
    return statistics.median(puzzle_times), median_step_seconds(loss_fn, optimizer, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30, help="timed puzzle-making calls")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="Hydra overrides after experiment=jigsaw_cifar10, e.g. data.batch_size=256",
    )
    args = parser.parse_args()
    overrides = ["experiment=jigsaw_cifar10", *args.set]
    full = full_step(overrides, args.steps, args.warmup)
    puzzle, bare = puzzle_and_bare_step(overrides, args.steps, args.warmup, args.repeats)
    batch = compose_cfg(overrides).data.batch_size
    result = {
        "overrides": overrides,
        "batch_size": batch,
        "full_step_s": round(full, 4),
        "bare_step_s": round(bare, 4),
        "puzzle_making_s": round(puzzle, 5),
        "puzzle_fraction_of_full_step": round(puzzle / full, 4),
        "full_puzzles_per_s": round(batch / full, 1),
        "bare_puzzles_per_s": round(batch / bare, 1),
        "framework_overhead": round(1 - bare / full, 4),
    }
    path = record("jigsaw_overhead", result)
    print(
        f"full step {full:.3f} s ({batch / full:.1f} puzzles/s), bare {bare:.3f} s, puzzle making "
        f"{1000 * puzzle:.1f} ms = {100 * puzzle / full:.2f}% of the full step; "
        f"framework overhead {100 * result['framework_overhead']:.1f}%  -> {path}"
    )


if __name__ == "__main__":
    main()
