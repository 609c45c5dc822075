"""Clusters: SLURM through submitit (config, requeue on SIGUSR1), sweeps through submitit's local launcher."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.training.commands import encoder_weights, max_difference, pretrain

TINY = [
    "data.pretrain.num_images=16",
    "data.batch_size=8",
    "data.image_size=16",
    "encoder.cifar_stem=true",
    "trainer.max_epochs=2",
    "optim=sgd",
    "schedule=constant",
    "threads=1",
]
# What SLURM sets for a one-task job (SLURMEnvironment.detect() and its ranks).
SLURM_ENV = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "pretrain",
    "SLURM_NODELIST": "127.0.0.1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_slurm_launcher_follows_the_trainer_and_signals_lightning() -> None:
    with initialize_config_module("selfsup.conf", version_base="1.3"):
        cfg = compose(
            "pretrain",
            ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["nodes"] == 2 and launcher["tasks_per_node"] == 4 and launcher["gpus_per_node"] == 4
    assert launcher["additional_parameters"] == {"signal": "USR1@120", "requeue": True}
    assert launcher["max_num_timeout"] == 0  # Lightning requeues, after saving a checkpoint


@pytest.mark.slow
def test_two_job_sweep_through_submitit_writes_both_runs_and_the_summary(tmp_path: Path) -> None:
    pretrain(tmp_path, ["-m", "hydra/launcher=submitit_local", *TINY, "trainer.max_steps=2", "seed=0,1"])
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())  # job folders
    assert [p.name.split("_")[0] for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "encoder" / "encoder.safetensors").is_file() and (run / "metrics.json").is_file()
    assert (sweep / "summary.md").is_file()


def _fake_scontrol(folder: Path) -> Path:
    """An ``scontrol`` on PATH that records its arguments instead of requeueing."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.log"}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.slow  # three runs: about 2.5 minutes on 2 busy cores
def test_sigusr1_under_slurm_saves_requeues_and_the_requeued_job_resumes(tmp_path: Path) -> None:
    import os

    env = {**SLURM_ENV, "PATH": f"{_fake_scontrol(tmp_path)}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    steps = ["trainer.max_steps=4", "callbacks.periodic_checkpoint=null"]
    run = tmp_path / "run"
    signal_at_3 = ["+callbacks.slurm_signal._target_=tests.training.signals.SignalAtStep"]
    signal_at_3.append("+callbacks.slurm_signal.step=3")  # mid-epoch: 2 steps per epoch
    pretrain(tmp_path, [*TINY, *steps, *signal_at_3], run_dir=run, env=env)
    assert (run / "hpc_ckpt_1.ckpt").is_file(), "Lightning saved no checkpoint on SIGUSR1"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert not (run / "encoder").exists()  # killed before the end
    requeued = pretrain(tmp_path, [*TINY, *steps], run_dir=run, env=env)  # what the requeued job runs
    assert "hpc_ckpt_1.ckpt" in requeued.stdout + requeued.stderr
    assert (run / "encoder" / "encoder.safetensors").is_file()
    uninterrupted = tmp_path / "uninterrupted"
    pretrain(tmp_path, [*TINY, *steps], run_dir=uninterrupted)
    difference = max_difference(encoder_weights(run), encoder_weights(uninterrupted))
    if difference > 0:
        pytest.xfail(f"the requeued run resumes, but not exactly yet (max difference {difference:.2e})")
