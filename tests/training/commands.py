"""Running ``selfsup-pretrain`` as a user would, in a subprocess, and reading what it wrote."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent

# A few steps on generated images, on CPUs, with nothing printed but the log.
QUIET = [
    "data=synthetic",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
]


def pretrain(
    folder: Path,
    overrides: Sequence[str],
    run_dir: Path | None = None,
    command: str = "selfsup-pretrain",
    timeout: float = 600,
    env: dict[str, str] | None = None,
    launcher_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``command`` with Hydra ``overrides``, run from ``folder``; fails the test with its output on error.

    ``run_dir`` sets ``hydra.run.dir`` (None leaves Hydra's default, or a sweep's); caches go under ``folder``.
    ``launcher_args`` come between a launcher ``command`` (``torchrun``) and the selfsup command it starts.
    """
    # Flags (-m) go first: Hydra's argparse takes no flag between its positional overrides.
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    args = [str(BIN / command), *launcher_args, *flags, *QUIET, f"paths.cache_dir={folder / 'cache'}", *rest]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    result = subprocess.run(
        args,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def encoder_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported encoder's state dict (buffers included)."""
    return load_file(str(run_dir / "encoder" / "encoder.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of ``key`` in the run's CSV log (logs/version_0/metrics.csv), in step order."""
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
