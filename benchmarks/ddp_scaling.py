"""DDP on CPUs: images/s of the same pretraining on 1 process and on 2 gloo processes, and what syncing costs.

Three runs of the real ``selfsup-pretrain`` command, same global batch B and seed:

- ``one``: 1 process, batch B, ``--threads`` threads (all the cores);
- ``two``: 2 processes (``trainer.strategy=ddp``, synchronized BatchNorm), batch B/2 and
  ``--threads / 2`` threads each;
- ``half``: 1 process, batch B/2, ``--threads / 2`` threads: one rank's work without any communication.

Step times are the wall-clock times between consecutive batch ends on rank 0 after a warm-up.
Synchronisation overhead = 1 - median step(half) / median step(two): the share of a DDP step spent on
the gradient all-reduce, the BatchNorm all-reduces and waiting for the other rank.

    python -m benchmarks.ddp_scaling                      # ResNet-18 (cifar stem), RotNet, 32 px, B=32
    python -m benchmarks.ddp_scaling --batch 64 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from benchmarks.common import record

REPO = Path(__file__).resolve().parents[1]


class StepTimes(pl.Callback):
    """Writes rank 0's wall-clock seconds between consecutive batch ends to ``path`` (JSON) at the end."""

    def __init__(self, path: str) -> None:
        self.path, self.times, self.last = path, [], None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.times))


def run(name: str, folder: Path, overrides: list[str]) -> list[float]:
    """One ``selfsup-pretrain`` run; its step times."""
    times = folder / f"{name}.json"
    args = [
        str(Path(sys.executable).parent / "selfsup-pretrain"),
        *overrides,
        f"hydra.run.dir={folder / name}",
        f"paths.cache_dir={folder / 'cache'}",
        "+callbacks.step_times._target_=benchmarks.ddp_scaling.StepTimes",
        f"+callbacks.step_times.path={times}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(args, cwd=folder, env=env, check=True, capture_output=True)
    return json.loads(times.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="global batch B")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process run (all cores)")
    parser.add_argument("--set", nargs="*", default=[], help="more Hydra overrides")
    args = parser.parse_args()
    common = [
        "task=rotnet",
        "encoder=resnet18",
        "encoder.cifar_stem=true",
        "data=synthetic",
        "data.image_size=32",
        f"data.pretrain.num_images={args.batch * (args.steps + args.warmup + 1)}",
        "optim=sgd",
        "schedule=constant",
        "trainer.accelerator=cpu",
        f"trainer.max_steps={args.steps + args.warmup + 1}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.last_checkpoint=null",
        "callbacks.periodic_checkpoint=null",
        "logger=none",
        *args.set,
    ]
    half_threads = max(1, args.threads // 2)
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.sync_batchnorm=true"]
    configs = {
        "one": [f"data.batch_size={args.batch}", f"threads={args.threads}"],
        "two": [f"data.batch_size={args.batch // 2}", f"threads={half_threads}", *ddp],
        "half": [f"data.batch_size={args.batch // 2}", f"threads={half_threads}"],
    }
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configs.items():
            times = run(name, Path(tmp), [*common, *overrides])[args.warmup :]
            medians[name] = statistics.median(times)
            print(f"{name}: median step {medians[name] * 1000:.1f} ms over {len(times)} steps")
    result = {
        "overrides": common,
        "global_batch": args.batch,
        "steps": args.steps,
        "median_step_s": {k: round(v, 4) for k, v in medians.items()},
        "images_per_s_1_process": round(args.batch / medians["one"], 1),
        "images_per_s_2_processes": round(args.batch / medians["two"], 1),
        "speedup": round(medians["one"] / medians["two"], 3),
        "sync_overhead": round(1 - medians["half"] / medians["two"], 3),
    }
    print(json.dumps(result, indent=1))
    print("recorded in", record("ddp_scaling", result))


if __name__ == "__main__":
    main()
