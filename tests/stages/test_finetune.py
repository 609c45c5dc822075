"""The fine-tuning stage end to end on generated images: metrics.json, transfer, config errors, a sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.encoders import ResNetEncoder, ViTEncoder, save
from selfsup.errors import ConfigError
from selfsup.stages.finetune import finetune
from tests.conftest import FAST_DATA

FAST_FINETUNE = [
    *FAST_DATA,
    "eval.finetune.max_steps=2",
    "eval.finetune.progress_bar=false",
    "eval.finetune.log_every_n_steps=1",
]


@pytest.fixture
def resnet_export(tmp_path: Path) -> Path:
    return save(ResNetEncoder(depth=18, cifar_stem=False), tmp_path / "resnet18", {"image_size": 32})


def test_stage_writes_metrics_with_its_settings(make_cfg, tmp_path: Path, resnet_export: Path) -> None:
    cfg = make_cfg(
        [*FAST_FINETUNE, f"+encoders.mine={resnet_export}", "eval.finetune.freeze_until=stage3",
         "eval.finetune.label_fraction=0.25", "eval.finetune.seeds=[0,1]", "eval.finetune.encoder_lr=2e-4"],
        config_name="finetune",
    )  # fmt: skip
    results = finetune(cfg)
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "metrics.json").read_text())["finetune"]
    assert saved == json.loads(json.dumps(results))
    assert saved["freeze_until"] == "stage3"
    assert saved["label_fraction"] == 0.25
    assert saved["seeds"] == [0, 1]
    assert saved["max_steps"] == 2 and saved["num_classes"] == 4
    mine = saved["encoders"]["mine"]
    assert len(mine["top1"]) == 2
    # 64 test images: every per-seed accuracy is a whole number of them
    assert all(abs(t * 64 / 100 - round(t * 64 / 100)) < 0.01 for t in mine["top1"])
    assert mine["top1_mean"] == round((mine["top1"][0] + mine["top1"][1]) / 2, 2)
    assert mine["train_images"] == 16  # a quarter of 64 images, 4 of each of the 4 classes
    assert mine["steps"] == 2
    assert mine["frozen_stages"] == ["stem", "stage1", "stage2", "stage3"]
    assert mine["stage_lr"] == {"stem": None, "stage1": None, "stage2": None, "stage3": None,
                                "stage4": 2e-4, "head": 1e-3}  # fmt: skip
    assert (run_dir / "finetune" / "mine" / "seed1" / "metrics.csv").is_file()


def test_transfer_to_other_classes_and_image_size(make_cfg, tmp_path: Path) -> None:
    vit = ViTEncoder(image_size=32, patch_size=8, width=32, depth=2, num_heads=2)
    export = save(vit, tmp_path / "vit", {"image_size": 32})
    cfg = make_cfg(
        [*FAST_FINETUNE, f"+encoders.vit={export}", "data.image_size=16", "data.train.num_classes=3",
         "data.test.num_classes=3", "eval.finetune.freeze_until=block1", "eval.finetune.layer_decay=0.65"],
        config_name="finetune",
    )  # fmt: skip
    results = finetune(cfg)
    assert results["num_classes"] == 3 and results["image_size"] == 16
    vit_result = results["encoders"]["vit"]
    assert vit_result["frozen_stages"] == ["patch_embed", "block1"]
    assert vit_result["stage_lr"]["patch_embed"] is None
    assert vit_result["stage_lr"]["block2"] == pytest.approx(1e-3 * 0.65)


def test_unknown_stage_is_named_with_the_allowed_ones(make_cfg, tmp_path: Path, resnet_export: Path) -> None:
    cfg = make_cfg(
        [*FAST_FINETUNE, f"+encoders.mine={resnet_export}", "eval.finetune.freeze_until=block3"],
        config_name="finetune",
    )
    with pytest.raises(ConfigError, match=r"'eval.finetune.freeze_until'.*'block3'.*\['stem', .*'stage4'\]"):
        finetune(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.finetune.label_fraction=0", r"'eval.finetune.label_fraction': must be in \(0, 1\]"),
        ("eval.finetune.label_fraction=10", r"'eval.finetune.label_fraction': must be in \(0, 1\]"),
        ("eval.finetune.layer_decay=1.5", r"'eval.finetune.layer_decay': must be in \(0, 1\]"),
        ("eval.finetune.seeds=[]", r"'eval.finetune.seeds': must be a non-empty list"),
        ("eval.finetune.encoder_lr=0", r"'eval.finetune.encoder_lr': must be a positive number"),
        ("eval.finetune.max_steps=0", r"'eval.finetune.max_steps': must be a positive integer"),
    ],
)
def test_bad_values_are_named(make_cfg, resnet_export: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        finetune(
            make_cfg([*FAST_FINETUNE, f"+encoders.mine={resnet_export}", override], config_name="finetune")
        )


def test_missing_or_no_export_is_named(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'encoders.mine'.*no exported encoder"):
        finetune(make_cfg([*FAST_FINETUNE, f"+encoders.mine={tmp_path}"], config_name="finetune"))
    with pytest.raises(ConfigError, match=r"'encoders'.*\+encoders.<label>="):
        finetune(make_cfg(FAST_FINETUNE, config_name="finetune"))


def test_sweep_writes_one_metrics_file_per_setting(tmp_path: Path, resnet_export: Path) -> None:
    script = Path(sys.executable).parent / "selfsup-finetune"
    if not script.exists():
        pytest.skip("selfsup-finetune is not installed in this environment")
    out = subprocess.run(
        [str(script), "-m", f"+encoders.mine={resnet_export}", *FAST_FINETUNE, "eval.finetune.max_steps=1",
         "data.test.num_images=16", "eval.finetune.freeze_until=null,stage4", "eval.finetune.label_fraction=0.5",
         f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun").glob("*/*/metrics.json"))
    settings = [json.loads(job.read_text())["finetune"] for job in jobs]
    assert [(s["freeze_until"], s["label_fraction"]) for s in settings] == [(None, 0.5), ("stage4", 0.5)]
    assert [job.parent.name for job in jobs] == ["0_freeze-None_labels-0.5", "1_freeze-stage4_labels-0.5"]
