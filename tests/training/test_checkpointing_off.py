"""With every ModelCheckpoint callback removed, no checkpoint is written anywhere."""

from __future__ import annotations

from pathlib import Path

from tests.training.commands import pretrain


def test_checkpointing_off_writes_no_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    off = ["callbacks.last_checkpoint=null", "callbacks.periodic_checkpoint=null"]
    tiny = [
        "data.pretrain.num_images=16",
        "data.batch_size=8",
        "data.image_size=16",
        "encoder.cifar_stem=true",
    ]
    pretrain(tmp_path, [*tiny, *off, "trainer.max_steps=2"], run_dir=run)
    assert (run / "encoder" / "encoder.safetensors").is_file()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ckpt")) == []
    assert not (run / "checkpoints").exists()
