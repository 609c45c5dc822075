"""Checkpoints are atomic, and a resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from selfsup.stages.pretrain import pretrain
from selfsup.training.checkpoint_io import AtomicCheckpointIO

EPOCHS = [
    "data=synthetic",
    "data.pretrain.num_images=24",
    "data.batch_size=8",
    "trainer.max_steps=-1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "encoder.cifar_stem=true",
    "data.image_size=16",
]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def explode(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert list(tmp_path.iterdir()) == [target], "no temporary file is left behind"


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "encoder" / "encoder.safetensors"))


class CrashAtEpoch(pl.Callback):
    """Stands in for a killed job: raises when the given epoch starts (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_ends_with_the_same_weights(make_cfg, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    pretrain(make_cfg([*EPOCHS, "trainer.max_epochs=3", f"paths.run_dir={straight}"]))

    crashed = tmp_path / "crashed"
    crash = [
        "+callbacks.crash._target_=tests.training.test_checkpoints.CrashAtEpoch",
        "+callbacks.crash.epoch=2",
    ]
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(make_cfg([*EPOCHS, "trainer.max_epochs=3", f"paths.run_dir={crashed}", *crash]))
    assert (crashed / "checkpoints" / "last.ckpt").is_file()
    assert not (crashed / "encoder").exists()
    metrics = pretrain(make_cfg([*EPOCHS, "trainer.max_epochs=3", f"paths.run_dir={crashed}", "resume=auto"]))
    assert metrics["epochs"] == 3 and metrics["steps"] == 9

    a, b = _weights(straight), _weights(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    logs = sorted((crashed / "logs").glob("*/metrics.csv"))
    assert len(logs) == 2, "the resumed attempt logs beside the first one instead of overwriting it"


def test_resume_from_a_missing_checkpoint_is_named(make_cfg, tmp_path: Path) -> None:
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'resume'.*does not exist"):
        pretrain(make_cfg([*EPOCHS, f"resume={tmp_path / 'nope.ckpt'}"]))


def test_resume_auto_reads_the_configured_checkpoint(make_cfg, tmp_path: Path) -> None:
    from selfsup.errors import ConfigError
    from selfsup.run_dir import RunDir
    from selfsup.stages.pretrain import resolve_resume

    cfg = make_cfg([f"callbacks.last_checkpoint.dirpath={tmp_path / 'elsewhere'}"])
    run = RunDir.from_config(cfg)
    assert resolve_resume("auto", run) is None, "nothing to resume yet"
    (tmp_path / "elsewhere").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "elsewhere" / "last.ckpt")  # readable: resume=auto checks
    assert resolve_resume("auto", run) == str(tmp_path / "elsewhere" / "last.ckpt")
    with pytest.raises(ConfigError, match="last_checkpoint"):
        resolve_resume("auto", RunDir.from_config(make_cfg(["callbacks.last_checkpoint=null"])))
