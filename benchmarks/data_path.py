"""The pretraining data path alone: images per second delivered to the step, by where decoding happens.

Three paths, timed through the DataModule's own ``train_dataloader`` and ``on_after_batch_transfer``
with no model, so each number is the most images per second the data can feed a step:

- ``workers``: loader workers decode and crop each image; batches cross to the device as uint8;
- ``device_decode`` (``data.decode_on_device=true``): workers only read bytes; JPEGs are decoded in
  one batched ``decode_jpeg`` on the device (nvJPEG on a GPU) and cropped there;
- ``on_device`` (``data.on_device=true``): decoded once, kept on the device, cropped in one call.

The device is the GPU when there is one (synchronized before each clock read), else the CPU. By
default the data is the embedded CIFAR-10 subset (64 px); ``--jpeg-size S`` writes ``--images``
JPEGs of S x S px once (the embedded images resized, quality 90; cached under /tmp) and reads those,
which is how to size workers for ImageNet-like files (``--workers 0 1 2 4`` gives images/s per
worker count, for the ``workers`` path).

    python -m benchmarks.data_path                                  # embedded, 64 px, every path
    python -m benchmarks.data_path --quick                          # fewer batches (a GPU session)
    python -m benchmarks.data_path --jpeg-size 224 --paths workers --workers 0 1   # CPU loader per worker
    python -m benchmarks.data_path --jpeg-size 224 --paths workers device_decode --set data.batch_size=256
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import compose_cfg, record
from selfsup.data.decode import decode
from selfsup.data.embedded import embedded_cifar10
from selfsup.stages.components import build_datamodule, setup_runtime

PATHS = {
    "workers": ["data.on_device=false", "data.decode_on_device=false"],
    "device_decode": ["data.on_device=false", "data.decode_on_device=true"],
    "on_device": ["data.on_device=true", "data.decode_on_device=false"],
}


def jpeg_folder(size: int, count: int) -> Path:
    """``count`` JPEGs of ``size`` x ``size`` px made from the embedded images, written once."""
    root = Path(f"/tmp/selfsup-bench-jpegs/{size}px-{count}")
    if len(list(root.glob("*.jpg"))) == count:
        return root
    root.mkdir(parents=True, exist_ok=True)
    source = embedded_cifar10("train", labeled=False)
    for i in range(count):
        sample = source.get(i % len(source))
        pixels = decode(sample.data, sample.name).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).resize((size, size), Image.BICUBIC).save(root / f"{i:06d}.jpg", quality=90)
    return root


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
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--jpeg-size", type=int, default=None, help="read JPEGs of this side instead")
    parser.add_argument("--images", type=int, default=2000, help="how many JPEGs --jpeg-size writes")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="data.num_workers values")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args()
    batches = 20 if args.quick else args.batches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data: list[str] = []
    if args.jpeg_size is not None:
        folder = jpeg_folder(args.jpeg_size, args.images)
        size = min(args.jpeg_size, 224)
        data = [
            "data=folder",
            f"data.path={folder}",
            f"data.image_size={size}",
            f"data.on_device_size={size}",
        ]
    for workers in args.workers or [None]:
        for path in args.paths:
            chosen = [] if workers is None or path == "on_device" else [f"data.num_workers={workers}"]
            overrides = [*data, *PATHS[path], *chosen, *args.set]
            rate = images_per_second(overrides, batches, args.warmup, device)
            result = {
                "path": path, "overrides": overrides, "device": device.type, "batches": batches,
                "jpeg_size": args.jpeg_size, "num_workers": workers, "images_per_s": round(rate, 1),
            }  # fmt: skip
            record("data_path", result)
            print(
                f"{path:13s} workers={workers} jpeg={args.jpeg_size}: {rate:9,.0f} images/s ({device.type})"
            )


if __name__ == "__main__":
    main()
