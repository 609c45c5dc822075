"""Faults lose nothing: NaN/inf, corrupt checkpoints, full disks, Ctrl-C, two runs in one directory.

The user-facing cases run the real ``selfsup-pretrain`` command and check that it ends with one
``error: ...`` (or ``interrupted: ...``) line and the documented exit code, never a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from selfsup.atomic import atomic_write_bytes
from selfsup.errors import CheckpointError, DiskFullError, RunDirBusyError
from selfsup.run_dir import RunDir
from selfsup.stages.pretrain import resolve_resume
from selfsup.training.faults import NonFiniteGuard
from tests.conftest import FAST

CLI = Path(sys.executable).parent / "selfsup-pretrain"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if not CLI.exists():
        pytest.skip("selfsup-pretrain is not installed in this environment")
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=600
    )


def _one_line(stderr: str, prefix: str = "error: ") -> str:
    """The single ``error: ...`` line of stderr; fails on a traceback or on several such lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _finite_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    return state


# -- NaN / inf --------------------------------------------------------------------------------------
@pytest.mark.parametrize("check_every", [1, 5], ids=["checked-every-step", "checked-every-5-steps"])
def test_a_blown_up_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, check_every: int
) -> None:
    """Read back every step or every 5 (trainer=gpu_fast's way), the run stops at the same first bad
    step, and the checkpoint written every step is the last finite one: it is checked before saving."""
    run = tmp_path / "run"
    out = _cli(
        *FAST, "trainer.max_steps=20", "trainer.max_epochs=5", "optim.lr=1e10", "data.num_workers=0",
        f"faults.check_every_n_steps={check_every}",
        "callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.last_checkpoint.every_n_epochs=null",
        f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert (
        "NaN or inf at step" in line and f"last good checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in line
    )
    state = _finite_checkpoint(run / "checkpoints" / "last.ckpt")
    assert f"at step {state['global_step'] + 1}" in line, "the checkpoint is the step before the blow-up"
    assert not (run / "encoder").exists(), "no non-finite encoder is exported"
    assert "pretrain" not in RunDir.default(run).read_metrics()


class _Spiky(pl.LightningModule):
    """A linear model whose loss is NaN on the given steps."""

    def __init__(self, nan_steps: set[int]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_steps = nan_steps

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step in self.nan_steps else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=4)


def _fit(model: pl.LightningModule, guard: NonFiniteGuard, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model)
    return trainer


def test_skip_nonfinite_skips_a_bounded_number_of_steps_without_updating() -> None:
    model = _Spiky({1, 2})
    guard = NonFiniteGuard(skip_nonfinite=2)
    before: list[torch.Tensor] = []

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before.append(pl_module.layer.weight.detach().clone())

    trainer = pl.Trainer(
        max_steps=4, callbacks=[guard, Snapshot()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model)
    assert guard.skipped == 2 and trainer.global_step == 4
    assert torch.equal(before[1], before[2]) and torch.equal(before[2], before[3]), "skipped steps: no update"
    assert not torch.equal(before[0], before[1])
    assert torch.isfinite(model.layer.weight).all()

    from selfsup.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"at step 3 after skipping 1 bad steps.*no checkpoint"):
        _fit(_Spiky({1, 2}), NonFiniteGuard(skip_nonfinite=1), 4)


def test_skipping_bad_steps_needs_the_check_every_step(make_cfg) -> None:
    from selfsup.config import check_training
    from selfsup.errors import ConfigError

    cfg = make_cfg(["faults.skip_nonfinite=2", "faults.check_every_n_steps=10"])
    with pytest.raises(ConfigError, match=r"faults.check_every_n_steps.*needs a check every step"):
        check_training(cfg)
    with pytest.raises(ValueError, match="check every step"):
        NonFiniteGuard(skip_nonfinite=2, check_every_n_steps=10)


def test_a_non_finite_encoder_is_never_exported(tmp_path: Path) -> None:
    from selfsup.encoders import export
    from selfsup.encoders.resnet import ResNetEncoder
    from selfsup.errors import NonFiniteError

    encoder = ResNetEncoder(depth=18, cifar_stem=True)
    with torch.no_grad():
        next(encoder.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="refusing to export a non-finite encoder"):
        export.save(encoder, tmp_path / "encoder")
    assert not (tmp_path / "encoder").exists()


# -- checkpoints ------------------------------------------------------------------------------------
def _good_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": step}, path)
    return path


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_last_checkpoint_falls_back_to_the_newest_readable(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = RunDir.default(tmp_path)
    older = _good_checkpoint(run.checkpoint_dir / "epoch000.ckpt", 1)
    newer = _good_checkpoint(run.checkpoint_dir / "epoch001.ckpt", 2)
    os.utime(older, (1, 1))
    last = _good_checkpoint(run.last_checkpoint, 3)
    last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("auto", run) == str(newer)
    assert str(last) in caplog.text and str(newer) in caplog.text


def test_a_newer_slurm_requeue_checkpoint_wins_over_last(tmp_path: Path) -> None:
    """Lightning saves hpc_ckpt_N.ckpt in the run directory on SIGUSR1; resume=auto takes the newer one."""
    run = RunDir.default(tmp_path)
    last = _good_checkpoint(run.last_checkpoint, 4)
    hpc = _good_checkpoint(run.root / "hpc_ckpt_1.ckpt", 6)
    os.utime(last, (1, 1))
    assert resolve_resume("auto", run) == str(hpc)
    os.utime(hpc, (0, 0))
    assert resolve_resume("auto", run) == str(last), "an older requeue checkpoint is not taken"


def test_no_readable_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    out = _cli(
        *FAST, "resume=auto", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path
    )
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert "last.ckpt is unreadable" in line and "no other readable checkpoint" in line
    with pytest.raises(CheckpointError, match="is empty"):
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
        resolve_resume(str(run / "checkpoints" / "last.ckpt"), RunDir.default(run))


def test_checkpoints_are_written_beside_the_target_not_in_the_system_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from selfsup.training.checkpoint_io import AtomicCheckpointIO

    def no_system_temp(*args: object, **kwargs: object) -> None:
        raise AssertionError("wrote through the system temp folder")

    monkeypatch.setattr(tempfile, "mkstemp", no_system_temp)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "last.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_temporary_files_are_removed_at_start(make_cfg, tmp_path: Path) -> None:
    from selfsup.stages.pretrain import pretrain

    stale = tmp_path / "run" / "checkpoints" / ".last.ckpt.tmp-999-deadbeef"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    pretrain(make_cfg([*FAST, "trainer.max_steps=1", "data.num_workers=0"]))
    assert not stale.exists()


# -- a full disk --------------------------------------------------------------------------------------
def test_a_full_disk_names_the_path_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "metrics.json", b"old")

    def fill_up(tmp: Path) -> None:
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    from selfsup.atomic import atomic_write

    with pytest.raises(DiskFullError, match=rf"writing {target} \(free: [0-9.]+ MiB\)"):
        atomic_write(target, fill_up)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def full_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write goes to ``/dev/full`` (a device that answers every write with ENOSPC)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    from selfsup import atomic

    real_temp_path = atomic.temp_path

    def onto_full_device(path, suffix=""):
        tmp = real_temp_path(path, suffix)
        tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(atomic, "temp_path", onto_full_device)


def test_torch_save_on_a_full_disk_is_a_disk_full_error(tmp_path: Path, full_device: None) -> None:
    """torch.save wraps the ENOSPC in a RuntimeError ("unexpected pos"); it is still a full disk."""
    from selfsup.training.checkpoint_io import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    with pytest.raises(DiskFullError, match=rf"writing {target} \(free: "):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.randn(100_000)}}, target)
    assert list(tmp_path.iterdir()) == [], "no temporary file or link is left behind"


def test_a_writer_that_loses_the_errno_on_a_full_disk_is_a_disk_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CI met: torch.save raised only "unexpected pos" while the disk had nothing left."""
    import shutil

    from selfsup import atomic

    def lost_errno(tmp: Path) -> None:
        tmp.write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 55876608 vs 55876496")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage._replace(free=4096))
    with pytest.raises(DiskFullError, match=r"\(free: 0.0 MiB\)"):
        atomic.atomic_write(tmp_path / "last.ckpt", lost_errno)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with space left, the writer's error stands
        atomic.atomic_write(tmp_path / "last.ckpt", lost_errno)
    assert list(tmp_path.iterdir()) == []


def test_an_export_on_a_full_disk_is_a_disk_full_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)")."""
    import safetensors.torch
    from safetensors import SafetensorError

    from selfsup.encoders import export
    from selfsup.encoders.resnet import ResNetEncoder

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", full)
    with pytest.raises(DiskFullError, match=r"encoder.safetensors \(free: "):
        export.save(ResNetEncoder(depth=18, cifar_stem=True), tmp_path / "encoder", None, {})
    assert not (tmp_path / "encoder" / export.WEIGHTS_FILE).exists()


def test_a_failed_export_is_finished_by_resume_auto_without_training(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from selfsup.encoders import export

    stage = importlib.import_module("selfsup.stages.pretrain")
    overrides = [*FAST, "trainer.max_steps=2", "data.num_workers=0"]
    real_save = export.save

    def full_disk(encoder, directory, *args, **kwargs):
        if Path(directory).name == "encoder":
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / export.WEIGHTS_FILE))
        return real_save(encoder, directory, *args, **kwargs)

    monkeypatch.setattr(export, "save", full_disk)
    with pytest.raises(DiskFullError, match=r"encoder/encoder.safetensors \(free: "):
        stage.pretrain(make_cfg(overrides))
    run = RunDir.default(tmp_path / "run")
    checkpoint = run.last_checkpoint
    assert _finite_checkpoint(checkpoint)["global_step"] == 2, "the last checkpoint stays usable"
    written = checkpoint.stat().st_mtime_ns
    monkeypatch.setattr(export, "save", real_save)

    results = stage.pretrain(make_cfg([*overrides, "resume=auto"]))
    assert results["steps"] == 2 and checkpoint.stat().st_mtime_ns == written, "exported without training"
    assert export.load(run.encoder) is not None
    metrics = run.metrics.read_bytes()
    assert json.loads(metrics)["pretrain"]["steps"] == 2

    again = stage.pretrain(make_cfg([*overrides, "resume=auto"]))
    assert again == json.loads(metrics)["pretrain"] and run.metrics.read_bytes() == metrics


# -- Ctrl-C -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-main-process", "sigterm-to-every-process-as-slurm"],
)
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(
    tmp_path: Path, signum: signal.Signals, whole_group: bool
) -> None:
    if not CLI.exists():
        pytest.skip("selfsup-pretrain is not installed in this environment")
    run = tmp_path / "run"
    args = [*FAST, "trainer.max_steps=100000", "trainer.max_epochs=1000", "data.num_workers=2"]
    proc = subprocess.Popen(
        [str(CLI), *args, f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(run.glob("logs/version_*/metrics.csv")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    if whole_group:
        os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does: the whole process group
    else:
        os.kill(proc.pid, signum)  # what `kill`, torchrun and submitit send to the main process
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    line = _one_line(stderr, "interrupted: ")
    state = _finite_checkpoint(run / "checkpoints" / "last.ckpt")
    assert f"stopped at step {state['global_step']}; saved {run / 'checkpoints' / 'last.ckpt'}" in line
    assert f"resume=auto hydra.run.dir={run}" in line and "data.num_workers=2" in line
    assert not (run / "encoder").exists(), "an interrupted run is not exported as if it had finished"


# -- one run per directory --------------------------------------------------------------------------
def test_a_second_run_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from selfsup.run_dir import RunDir\n"
         f"with RunDir.default({str(run)!r}).locked():\n print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        out = _cli(*FAST, f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
        assert out.returncode == 2
        assert f"run directory {run} is in use by another run (pid {holder.pid})" in _one_line(out.stderr)
        assert not (run / "encoder_init").exists() and not (run / "checkpoints").exists()
        with pytest.raises(RunDirBusyError):
            RunDir.default(run).locked().__enter__()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, yet the kernel releases the lock
        holder.wait()
    with RunDir.default(run).locked(), RunDir.default(run).locked():  # free again, and re-entrant
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_checked_every_n_steps_a_run_that_ends_mid_interval_still_stops_at_the_first_bad_step() -> None:
    """max_steps (or max_time) can end a run between two read-backs: the end of training reads it."""
    from selfsup.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"NaN or inf at step 2\b"):
        _fit(_Spiky({1}), NonFiniteGuard(check_every_n_steps=50), 3)
