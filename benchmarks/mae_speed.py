"""MAE: images per second of one training step against the bare encoder on all tokens.

MAE step: random masking, the encoder on the visible tokens only, the decoder on all tokens, the
masked-patch loss, backward and an AdamW step over encoder and decoder. Bare step: the same ViT's own
forward on all tokens (``encoder(images).mean()`` as the loss), backward and an AdamW step: what any
pretext task that shows the encoder whole images pays at least. Both on the same batch of already
normalized images, so data loading is not timed. Ratio = MAE images/s over bare images/s.

    python -m benchmarks.mae_speed                              # ViT-Tiny, patch 4, at 32 and 64 px
    python -m benchmarks.mae_speed --sizes 32 --set task.decoder_depth=4
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.common import compose_cfg, median_step_seconds, record
from selfsup.stages.components import build_datamodule, build_encoder, build_task, setup_runtime
from selfsup.training.optim import build_optimizer

DEFAULTS = ["task=mae", "encoder=vit_tiny", "encoder.patch_size=4", "data.batch_size=64"]


def images_per_second(
    loss_fn: Callable[[], Tensor], modules: list[nn.Module], batch: int, steps: int, warmup: int
) -> float:
    """Images per second of ``loss_fn()`` + backward + AdamW step over ``modules``."""
    optimizer = build_optimizer(torch.optim.AdamW, modules, lr=1e-4, weight_decay=0.05)
    for module in modules:
        module.train()
    return batch / median_step_seconds(loss_fn, optimizer, steps, warmup)


def measure(overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    cfg = compose_cfg(overrides)
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["pretrain"])
    images = datamodule.prepare_batch(next(iter(datamodule.train_dataloader())))["image"]
    task = build_task(cfg, build_encoder(cfg))
    mae = images_per_second(
        lambda: task.pretext_step(images).loss, [task.encoder, *task.heads()], len(images), steps, warmup
    )
    encoder = build_encoder(cfg)  # a fresh copy: same architecture, untouched by the MAE steps
    bare = images_per_second(lambda: encoder(images).mean(), [encoder], len(images), steps, warmup)
    return {
        "mae_images_per_s": round(mae, 1),
        "bare_images_per_s": round(bare, 1),
        "ratio": round(mae / bare, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--set", nargs="*", default=[], help="extra Hydra overrides, e.g. task.mask_ratio=0.5"
    )
    args = parser.parse_args()
    for size in args.sizes:
        overrides = [*DEFAULTS, f"data.image_size={size}", *args.set]
        result = {"overrides": overrides, "steps": args.steps, **measure(overrides, args.steps, args.warmup)}
        path = record("mae_speed", result)
        print(
            f"{size:3d} px  MAE {result['mae_images_per_s']:7.1f} img/s  bare encoder "
            f"{result['bare_images_per_s']:7.1f} img/s  ratio {result['ratio']:.2f}x  -> {path}"
        )


if __name__ == "__main__":
    main()
