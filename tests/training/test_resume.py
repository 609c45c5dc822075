"""A run killed with SIGKILL at a random step and resumed with ``resume=auto`` ends bit-identical.

The real command (``selfsup-pretrain``) runs in a subprocess. The kill is a real SIGKILL, sent by the
process to itself at the chosen step (a callback added on the command line), so no cleanup of any
kind runs: what survives is what the last mid-epoch checkpoint saved.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
COMMAND = Path(sys.executable).parent / "selfsup-pretrain"
STEPS_PER_EPOCH = 3  # 24 images, batches of 8
CHECKPOINT_EVERY = 4  # steps: most checkpoints fall inside an epoch

TINY = [
    "data=synthetic",
    "data.pretrain.num_images=24",
    "data.batch_size=8",
    "data.image_size=16",
    "trainer.deterministic=true",
    "trainer.max_steps=-1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.periodic_checkpoint=null",
    "callbacks.last_checkpoint.every_n_epochs=null",
    f"callbacks.last_checkpoint.every_n_train_steps={CHECKPOINT_EVERY}",
]


class KillAt(pl.Callback):
    """Sends SIGKILL to its own process when training reaches ``step`` (before that step runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    device = (
        [] if any(o.startswith("trainer.accelerator=") for o in overrides) else ["trainer.accelerator=cpu"]
    )
    args = [
        str(COMMAND), *TINY, *device, f"hydra.run.dir={run_dir}", f"paths.cache_dir={run_dir.parent / 'cache'}"
    ]  # fmt: skip
    return subprocess.Popen(
        [*args, *overrides], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen, check: bool = True) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=600)
    if check and process.returncode != 0:
        raise AssertionError(f"selfsup-pretrain failed ({process.returncode}):\n{stderr[-3000:]}")
    return process.returncode, stderr


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "encoder" / "encoder.safetensors"))


def _kill_step(rng: random.Random, total: int) -> int:
    """A step after the first checkpoint that is not an epoch boundary."""
    return rng.choice([s for s in range(CHECKPOINT_EVERY + 1, total) if s % STEPS_PER_EPOCH])


def check_killed_run_resumes_exactly(tmp_path: Path, overrides: list[str], epochs: int) -> None:
    total = epochs * STEPS_PER_EPOCH
    step = _kill_step(random.Random(), total)
    settings = [f"trainer.max_epochs={epochs}", *overrides]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    kill = ["+callbacks.kill._target_=tests.training.test_resume.KillAt", f"+callbacks.kill.step={step}"]
    uninterrupted = _start(straight, settings)  # the first two runs are independent: side by side
    returncode, stderr = _finish(_start(killed, [*settings, *kill]), check=False)
    _finish(uninterrupted)
    assert returncode == -signal.SIGKILL, f"kill at step {step}: exit {returncode}\n{stderr[-2000:]}"
    assert (killed / "checkpoints" / "last.ckpt").is_file() and not (killed / "encoder").exists()
    saved = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "global_step"
    ]
    assert saved == step // CHECKPOINT_EVERY * CHECKPOINT_EVERY, f"killed at {step}"

    _finish(_start(killed, [*settings, "resume=auto"]))
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"killed at step {step} (last checkpoint at {saved}): {len(differ)} tensors differ"


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_run_resumes_to_identical_weights(tmp_path: Path, workers: int) -> None:
    persistent = "true" if workers else "false"
    overrides = [
        "encoder.cifar_stem=true",
        f"data.num_workers={workers}",
        f"data.persistent_workers={persistent}",
    ]
    check_killed_run_resumes_exactly(tmp_path, overrides, epochs=4)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mae", "simmim", "jigsaw"])
def test_every_task_resumes_to_identical_weights(tmp_path: Path, task: str) -> None:
    """The pretext draws (masks, puzzles) come from the sample keys too; with workers and a schedule."""
    vit = ["encoder=vit_tiny", "encoder.patch_size=4", "encoder.depth=2", "task.reconstructions=null"]
    overrides = {
        "mae": vit,
        "simmim": vit,
        "jigsaw": ["encoder.cifar_stem=true", "data.image_size=48", "task.report_puzzles=0"],
    }[task]
    overrides = [f"task={task}", *overrides, "data.num_workers=2", "data.persistent_workers=true"]
    check_killed_run_resumes_exactly(tmp_path, overrides, epochs=3)


@pytest.mark.gpu
def test_killed_gpu_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    """The same on one GPU with bf16 autocast (``-m gpu``; deterministic kernels through Lightning)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    gpu = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    check_killed_run_resumes_exactly(tmp_path, ["encoder.cifar_stem=true", *gpu], epochs=4)
