"""MAE: peak memory of one training step against the bare encoder's step on all tokens.

Method: peak resident set size (RSS) of a fresh Python process per measurement, so nothing left by
an earlier measurement counts. The process builds the model, an AdamW optimizer and one batch of
normalized images, reads its current RSS (``/proc/self/statm``: "setup"), runs a few training steps
(the first one allocates AdamW's state), and reads its peak RSS (``getrusage``'s ``ru_maxrss``).
"Step memory" = peak - setup: activations kept for backward, gradients, optimizer state and
temporaries at their high-water mark. On CPU torch allocates tensor memory from the system allocator,
so RSS sees it (``tracemalloc`` would not). The steps are the same as in ``benchmarks.mae_speed``.

    python -m benchmarks.mae_memory                      # ViT-Tiny, patch 4, batch 64, at 32 and 64 px
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

DEFAULTS = ["task=mae", "encoder=vit_tiny", "encoder.patch_size=4", "data.batch_size=64"]
MODES = ("mae", "bare")


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, overrides: list[str], steps: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    import torch

    from benchmarks.common import compose_cfg
    from selfsup.stages.components import build_encoder, build_task, setup_runtime
    from selfsup.training.optim import build_optimizer

    cfg = compose_cfg(overrides)
    setup_runtime(cfg)
    size, batch = int(cfg.data.image_size), int(cfg.data.batch_size)
    images = torch.randn(batch, 3, size, size)  # memory does not depend on the pixels
    if mode == "mae":
        task = build_task(cfg, build_encoder(cfg))
        modules = [task.encoder, *task.heads()]

        def loss_fn() -> torch.Tensor:
            return task.pretext_step(images).loss
    else:
        encoder = build_encoder(cfg)
        modules = [encoder]

        def loss_fn() -> torch.Tensor:
            return encoder(images).mean()

    optimizer = build_optimizer(torch.optim.AdamW, modules, lr=1e-4, weight_decay=0.05)
    setup, peak_before = current_rss_mib(), peak_rss_mib()
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    peak = peak_rss_mib()
    return {
        "setup_rss_mib": round(setup, 1),
        "peak_before_steps_mib": round(peak_before, 1),
        "peak_rss_mib": round(peak, 1),
        "step_mib": round(peak - setup, 1),
        "parameters": sum(p.numel() for m in modules for p in m.parameters()),
    }


def measure(mode: str, overrides: list[str], steps: int) -> dict[str, float]:
    """Run :func:`child` in a fresh interpreter and return what it measured."""
    command = [sys.executable, "-m", "benchmarks.mae_memory", "--child", mode, "--steps", str(steps)]
    out = subprocess.run([*command, "--set", *overrides], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.set, args.steps)))
        return
    from benchmarks.common import record

    for size in args.sizes:
        overrides = [*DEFAULTS, f"data.image_size={size}", *args.set]
        results = {mode: measure(mode, overrides, args.steps) for mode in MODES}
        ratio = results["mae"]["step_mib"] / results["bare"]["step_mib"]
        result = {"overrides": overrides, "steps": args.steps, **results, "step_ratio": round(ratio, 2)}
        path = record("mae_memory", result)
        print(
            f"{size:3d} px  step memory: MAE {results['mae']['step_mib']:7.1f} MiB  bare encoder "
            f"{results['bare']['step_mib']:7.1f} MiB  ratio {ratio:.2f}  (peak RSS "
            f"{results['mae']['peak_rss_mib']:.0f} vs {results['bare']['peak_rss_mib']:.0f} MiB)  -> {path}"
        )


if __name__ == "__main__":
    main()
