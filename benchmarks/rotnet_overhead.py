"""RotNet: how much the framework adds on top of the encoder's own forward, backward and optimizer step.

Full step: the real Lightning training loop on the embedded CIFAR-10 subset (data loading, rotations
on the device, head, loss, logging, optimizer, LR schedule), timed between consecutive batch ends.
Bare step: the same encoder and optimizer on the same already-rotated, normalized tensors, with nothing
else. Overhead = 1 - full / bare (in source images per second), from the medians of per-step times over
--repeats alternating measurements.

    python -m benchmarks.rotnet_overhead                      # resnet18 at 32 and 64 px, main-job defaults
    python -m benchmarks.rotnet_overhead --sizes 32 --set task.rotations=random
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import StepTimer, compose_cfg, median_step_seconds, record
from selfsup.stages.components import build_datamodule, build_encoder, build_task, setup_runtime
from selfsup.tasks.rotnet import rotate_batch
from selfsup.training.optim import build_optimizer
from selfsup.training.trainer import build_trainer


def full_step(overrides: list[str], steps: int, warmup: int) -> float:
    """Source images per second of the whole Lightning training step."""
    no_extras = [
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.last_checkpoint=null",
        "callbacks.periodic_checkpoint=null",
    ]
    cfg = compose_cfg(
        [*overrides, f"trainer.max_steps={warmup + steps}", "trainer.max_epochs=1000", *no_extras]
    )
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    task = build_task(cfg, build_encoder(cfg))
    if cfg.channels_last:
        task.memory_format = torch.channels_last
        task.to(memory_format=torch.channels_last)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, enable_progress_bar=False, enable_model_summary=False)
    trainer.callbacks.append(timer)
    trainer.fit(task, datamodule=datamodule)
    return datamodule.batch_size / timer.seconds_per_step()


def bare_step(overrides: list[str], steps: int, warmup: int) -> float:
    """Source images per second of encoder forward + backward + optimizer step on ready tensors."""
    cfg = compose_cfg(overrides)
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    encoder = build_encoder(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    images = datamodule.on_after_batch_transfer(batch, 0)["image"]  # on_device batches: gathered, cropped
    inputs, _ = rotate_batch(images, cfg.task.rotations)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    encoder.to(memory_format=memory_format)
    inputs = inputs.contiguous(memory_format=memory_format)
    optimizer = build_optimizer(torch.optim.AdamW, [encoder], lr=1e-3, weight_decay=0.05)
    encoder.train()
    seconds = median_step_seconds(lambda: encoder(inputs).mean(), optimizer, steps, warmup)
    return images.shape[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternate full and bare this many times; medians reported"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="extra Hydra overrides, e.g. encoder.cifar_stem=true"
    )
    args = parser.parse_args()
    for size in args.sizes:
        overrides = ["task=rotnet", "encoder=resnet18", f"data.image_size={size}", *args.set]
        # Alternating the two measurements spreads any slow spell of a shared machine over both.
        fulls, bares = [], []
        for _ in range(args.repeats):
            fulls.append(full_step(overrides, args.steps, args.warmup))
            bares.append(bare_step(overrides, args.steps, args.warmup))
        full, bare = statistics.median(fulls), statistics.median(bares)
        result = {
            "overrides": overrides,
            "full_images_per_s": round(full, 1),
            "bare_images_per_s": round(bare, 1),
            "overhead": round(1 - full / bare, 4),
            "repeats": {"full": [round(v, 1) for v in fulls], "bare": [round(v, 1) for v in bares]},
        }
        path = record("rotnet_overhead", result)
        print(
            f"{size:3d} px  full {full:8.1f} img/s  bare {bare:8.1f} img/s  overhead {100 * result['overhead']:5.1f}%  -> {path}"
        )


if __name__ == "__main__":
    main()
