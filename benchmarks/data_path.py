"""The pretraining data path alone: images per second delivered to the step, decoding vs on-device.

Decoding path (``data.on_device=false``): workers decode and crop each image, batches cross to the
device as uint8 and are normalized there. On-device path (``data.on_device=true``): the images were
decoded once, the loader hands out indices and keys, and each batch is gathered and cropped on the
device in one call. Both are timed through the DataModule's own ``train_dataloader`` and
``on_after_batch_transfer``, with no model, so the number is the most images per second the data can
feed a step. The device is the GPU when there is one (synchronized before each clock read), else CPU.

    python -m benchmarks.data_path                         # embedded CIFAR-10 at 64 px, batch 64
    python -m benchmarks.data_path --quick                 # fewer batches (a GPU session's check)
    python -m benchmarks.data_path --set data.batch_size=512 data.num_workers=8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import compose_cfg, record
from selfsup.stages.components import build_datamodule, setup_runtime


def images_per_second(overrides: list[str], batches: int, warmup: int, device: torch.device) -> float:
    """Median images/s of ``batches`` batches after ``warmup``, through loader and device transfer."""
    cfg = compose_cfg(overrides)
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    if datamodule.on_device:
        datamodule.resident()  # decoded (or read from the cache) before the clock starts
    times: list[float] = []
    loader = iter(datamodule.train_dataloader())
    for i in range(warmup + batches):
        started = time.perf_counter()
        batch = next(loader)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch = datamodule.on_after_batch_transfer(batch, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return datamodule.batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 batches")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args()
    batches = 20 if args.quick else args.batches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, object] = {"overrides": args.set, "device": device.type, "batches": batches}
    for mode in ("false", "true"):
        rate = images_per_second([*args.set, f"data.on_device={mode}"], batches, args.warmup, device)
        result[f"on_device_{mode}_images_per_s"] = round(rate, 1)
        print(f"data.on_device={mode}: {rate:,.0f} images/s ({device.type})")
    print(record("data_path", result))


if __name__ == "__main__":
    main()
