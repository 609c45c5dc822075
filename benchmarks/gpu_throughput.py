"""Is the accelerator the bottleneck? Images/s of each task's full step, its floor, the data wait and MFU.

For each task at its paper configuration (on the embedded images, stored on the device at the
configuration's size, since throughput does not depend on what the pixels show):

- **full**: source images per second of the real Lightning training loop (data, pretext inputs,
  encoder, head, loss, logging, optimizer, schedule), over the timed steps after warm-up, with the
  device synchronised at both ends of the timed window (host time alone would count kernel launches);
- **floor**: the bare encoder forward + backward + optimizer step on ready, already-made encoder
  inputs of the same shape, precision and memory format: what no framework can beat;
- **data wait**: the share of the loop's time spent fetching the next batch (Lightning's profiler,
  ``train_dataloader_next``). The host runs ahead of the GPU, so this is time the GPU had nothing
  queued only when the data path is the bottleneck; when the GPU is, the host waits elsewhere;
- **MFU**: the step's FLOPs (``torch.utils.flop_counter`` over one eager pretext step and its
  backward) times steps per second, over the chip's dense bf16 peak (a table below; null when the
  chip is not in it, e.g. on a CPU);
- **schedule time**: one epoch of the paper's dataset and the configuration's whole schedule (its
  ``max_steps`` or ``max_epochs``) at the full rate on this one device, in minutes: for RotNet's NIN,
  whether the paper's 100 epochs fit a 10-minute GPU call (issue 14), and if not, how long they take.

Goals on one H200 (issue 12): data wait under 5 %, full within 10 % of the floor, RotNet CIFAR-10 at a
rate where 100 epochs of all four rotations (5M source images) take under 5 minutes (16.7k img/s).

    python -m benchmarks.gpu_throughput --quick                    # every config, few steps
    python -m benchmarks.gpu_throughput --configs rotnet_nin --steps 200 --set compile=true
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import SimpleProfiler
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import compose_cfg, record
from selfsup.stages.components import build_datamodule, build_pretext_encoder, build_task, setup_runtime
from selfsup.training.optim import build_optimizer
from selfsup.training.performance import apply_performance_switches
from selfsup.training.trainer import build_trainer

# Each task's paper configuration, on the embedded images stored at its size on the device.
CONFIGS: dict[str, list[str]] = {
    "rotnet_nin": ["experiment=rotnet_nin_paper", "data=embedded"],
    "rotnet_resnet18": [
        "task=rotnet", "task.rotations=all", "encoder=resnet18", "encoder.cifar_stem=true",
        "data.image_size=32", "data.batch_size=128", "data.crop=padded", "optim=sgd",
    ],
    "jigsaw": ["experiment=jigsaw_paper", "data=embedded"],
    "mae_vitb16": ["experiment=mae_vitb16_imagenet", "data=embedded"],
    "simmim_vitb16": [
        "task=simmim", "encoder=vit_base", "data.image_size=224", "data.batch_size=128",
        "data.crop_scale=[0.67,1.0]",
    ],
}  # fmt: skip
# The training images of each configuration's paper dataset (CIFAR-10, ImageNet-1k): with the
# schedule's length from the composed experiment, what the measured rate makes of a whole run.
PAPER_IMAGES = {
    "rotnet_nin": 50_000, "rotnet_resnet18": 50_000, "jigsaw": 1_281_167,
    "mae_vitb16": 1_281_167, "simmim_vitb16": 1_281_167,
}  # fmt: skip
# Dense bf16 peak FLOP/s per chip (vendor data sheets; sparsity excluded).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
DATA_NEXT = "[_TrainingEpochLoop].train_dataloader_next"


def peak_flops() -> float | None:
    """The dense bf16 peak of this process's GPU, or None (CPU, or a chip not in the table)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for chip, peak in PEAK_BF16.items() if chip in name), None)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class WindowTimer(pl.Callback):
    """Wall time of the steps after ``warmup``, the device synchronised at both ends of the window."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: tuple[int, float] | None = None
        self.end: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            synchronize()
            self.start = (trainer.global_step, time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.end = (trainer.global_step, time.perf_counter())

    def seconds_per_step(self) -> float:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            raise RuntimeError("no timed steps; raise --steps")
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])


def compose(name: str, extra: list[str], steps: int) -> Any:
    size_hint = ["data.on_device=true", "data.on_device_size=${data.image_size}", "data.num_workers=0"]
    no_extras = [
        "logger=none", "callbacks.last_checkpoint=null", "callbacks.periodic_checkpoint=null",
        "callbacks.progress_bar=null", f"trainer.max_steps={steps}", "trainer.max_epochs=10000",
    ]  # fmt: skip
    return compose_cfg([*CONFIGS[name], *size_hint, *extra, *no_extras])


def schedule_images(name: str, extra: list[str]) -> tuple[int, str]:
    """Source images the configuration's schedule trains on over its paper dataset, and how it is set.

    The schedule is the composed configuration's own, with the ``--set`` overrides (``trainer.max_steps``
    when set, else ``max_epochs`` over :data:`PAPER_IMAGES`), before this benchmark shortens it. A
    configuration without a paper preset (no ``experiment=``) has the default schedule, and says so.
    """
    overrides = [*CONFIGS[name], *extra]
    cfg = compose_cfg(overrides)
    preset = (
        "" if any(o.startswith("experiment=") for o in overrides) else " (default schedule: no paper preset)"
    )
    steps, epochs = int(cfg.trainer.max_steps), int(cfg.trainer.max_epochs)
    if steps > 0:
        batch = int(cfg.data.batch_size) * int(cfg.trainer.get("accumulate_grad_batches", 1))
        return steps * batch, f"trainer.max_steps={steps} x {batch} images{preset}"
    return epochs * PAPER_IMAGES[name], f"{epochs} epochs of {PAPER_IMAGES[name]:,} images{preset}"


def full_step(cfg: Any, warmup: int) -> tuple[float, float, Any, Any]:
    """(seconds per step, data-wait share, task, a device batch) of the real training loop."""
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    task = build_task(cfg, build_pretext_encoder(cfg))
    apply_performance_switches(
        task, channels_last=bool(cfg.channels_last), compile=bool(cfg.compile), compile_mode=cfg.compile_mode
    )
    timer = WindowTimer(warmup)
    profiler = SimpleProfiler(dirpath=cfg.paths.run_dir, filename="profile")  # its table to a file
    trainer = build_trainer(cfg, enable_progress_bar=False, enable_model_summary=False, profiler=profiler)
    trainer.callbacks.append(timer)  # type: ignore[attr-defined]
    device = trainer.strategy.root_device
    trainer.fit(task, datamodule=datamodule)
    task.to(device)  # Lightning's teardown moved it to the CPU; the floor and FLOPs run where it trained
    durations = profiler.recorded_durations
    fetches = durations.get(DATA_NEXT, [])[warmup:]
    seconds = timer.seconds_per_step()
    wait = sum(fetches) / (seconds * len(fetches)) if fetches else float("nan")
    batch = datamodule.on_after_batch_transfer(
        pl.utilities.move_data_to_device(next(iter(datamodule.train_dataloader())), task.device), 0
    )
    return seconds, wait, task, batch


def encoder_inputs(task: Any, images: torch.Tensor) -> torch.Tensor:
    """What the task feeds its encoder for ``images``, made once (the floor's ready tensors)."""
    captured: list[torch.Tensor] = []
    hook = task.encoder.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            task.pretext_step(images, None)
    finally:
        hook.remove()
    if not captured:  # MAE and SimMIM on a ViT call its parts, not its forward: the floor is the images
        return images
    return captured[0]


def floor_step(cfg: Any, task: Any, images: torch.Tensor, steps: int, warmup: int) -> float:
    """Seconds per step of the bare encoder forward + backward + optimizer on ready inputs."""
    encoder = task.encoder
    inputs = encoder_inputs(task, images).contiguous(memory_format=task.memory_format)
    optimizer = build_optimizer(torch.optim.SGD, [encoder], lr=1e-3, weight_decay=0.0)
    autocast = torch.autocast(
        inputs.device.type, dtype=torch.bfloat16, enabled="bf16" in str(cfg.trainer.precision)
    )
    for i in range(warmup + steps):
        if i == warmup:
            synchronize()
            started = time.perf_counter()
        with autocast:
            loss = encoder(inputs).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return (time.perf_counter() - started) / steps


def step_flops(task: Any, images: torch.Tensor) -> int:
    """FLOPs of one pretext step and its backward (eager, counted by torch's flop counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        task.pretext_step(images, None).loss.backward()  # the eager step, even when training compiles it
    task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure(name: str, extra: list[str], steps: int, warmup: int) -> dict[str, Any]:
    cfg = compose(name, extra, warmup + steps)
    seconds, wait, task, batch = full_step(cfg, warmup)
    images = batch["image"]
    batch_size = images.shape[0]
    floor = floor_step(cfg, task, images, steps, warmup)
    flops = step_flops(task, images)
    peak = peak_flops()
    rate = batch_size / seconds
    schedule, schedule_is = schedule_images(name, extra)
    return {
        "config": name,
        "overrides": [*CONFIGS[name], *extra],
        "batch_size": batch_size,
        "image_size": int(images.shape[-1]),
        "full_images_per_s": round(rate, 1),
        "floor_images_per_s": round(batch_size / floor, 1),
        "full_vs_floor": round(floor / seconds, 3),
        "data_wait_share": round(wait, 4),
        "tflop_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "epoch_s_on_paper_data": round(PAPER_IMAGES[name] / rate, 1),
        "schedule": schedule_is,
        "schedule_h_on_this_device": round(schedule / rate / 3600, 3),
        "steps": steps,
        "warmup": warmup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="30 timed steps after 10 warm-up steps")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides, e.g. trainer=gpu_fast")
    args = parser.parse_args()
    steps, warmup = (30, 10) if args.quick else (args.steps, args.warmup)
    for name in args.configs:
        result = measure(name, args.set, steps, warmup)
        path = record("gpu_throughput", result)
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
        print(
            f"{name:16s} full {result['full_images_per_s']:9.1f} img/s  floor {result['floor_images_per_s']:9.1f}"
            f"  full/floor {result['full_vs_floor']:.2f}  data wait {100 * result['data_wait_share']:4.1f}%"
            f"  {result['achieved_tflops']:7.2f} TFLOP/s  MFU {mfu}"
            f"  epoch {result['epoch_s_on_paper_data']:.0f} s, schedule ({result['schedule']})"
            f" {60 * result['schedule_h_on_this_device']:.1f} min  -> {path}"
        )


if __name__ == "__main__":
    main()
