"""End to end on generated images: pretrain -> export -> probe, the CLI, and a multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup.encoders import load
from selfsup.eval.results import ProbeResults
from selfsup.stages.pipeline import run
from selfsup.stages.probe import probe
from tests.conftest import FAST, FAST_DATA, compose_in

PROBE = ["eval.linear_probe.epochs=2", "eval.linear_probe.seeds=[0,1]", "eval.linear_probe.layers=[pooled]"]
FINETUNE = ["eval=full", "eval.finetune.max_steps=2", "eval.finetune.progress_bar=false"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One main-job run on generated images, shared by the tests that read what it leaves behind."""
    folder = tmp_path_factory.mktemp("pipeline")
    return folder / "run", run(compose_in(folder, [*FAST, *FINETUNE, *PROBE], config_name="pipeline"))


def test_pretrain_export_probe(pipeline_run: tuple[Path, dict]) -> None:
    run_dir, metrics = pipeline_run
    assert metrics["pretrain"]["steps"] == 2
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) >= {"pretrain", "linear_probe", "knn", "finetune", "total_time_s"}
    probe_results = ProbeResults.from_dict(saved["linear_probe"])
    assert probe_results.seeds == (0, 1) and probe_results.mode == "cached"
    for label in ("pretrained", "random_init"):
        pooled = probe_results.encoders[label].layers["pooled"]
        assert pooled.dim == 512 and len(pooled.top1.values) == 2
        # 64 test images: every per-seed accuracy is a whole number of them
        assert all(abs(v * 64 / 100 - round(v * 64 / 100)) < 0.01 for v in pooled.top1.values)
    comparison = probe_results.comparison
    assert comparison is not None and comparison.best_layer == "pooled"
    pre, rnd = (probe_results.encoders[e].layers["pooled"].top1 for e in ("pretrained", "random_init"))
    assert comparison.layers["pooled"].gain == round(pre.mean - rnd.mean, 2)
    assert set(saved["knn"]["encoders"]["pretrained"]) == {
        "top1_k20",
        "top1_k200",
        "val_top1_k20",
        "val_top1_k200",
    }
    assert saved["knn"]["versus"] == ["pretrained", "random_init"]
    # The exported encoder differs from its initialization and reloads.
    trained, init = load(run_dir / "encoder"), load(run_dir / "encoder_init")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), init.state_dict().values(), strict=True)
    )
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    report = (run_dir / "report.md").read_text()
    assert "## Linear probe" in report and "## kNN" in report and "## Fine-tuning" in report
    for label in ("pretrained", "random_init"):
        assert saved["finetune"]["encoders"][label]["steps"] == 2
        tuned = saved["finetune"]["encoders"][label]
        val, test = tuned["val"], tuned
        assert (
            f"| {label} | {val['top1_mean']:.2f} ± {val['top1_std']:.2f} | {test['top1_mean']:.2f} ±"
            in report
        )
    pre_val, rnd_val = (probe_results.encoders[e].layers["pooled"].val for e in ("pretrained", "random_init"))
    assert pre_val is not None and rnd_val is not None
    assert (
        f"| pooled * | 512 | {pre_val.mean_std()} | {pre.mean_std()} | {rnd_val.mean_std()} | {rnd.mean_std()} "
        f"| {comparison.layers['pooled'].cell()} |" in report
    )
    for figure in ("probe_layers.png", "training_curves.png", "embedding_tsne.png"):
        assert (run_dir / "figures" / figure).stat().st_size > 1000, figure


def test_probe_stage_reads_exports_and_reuses_cached_features(
    make_cfg, pipeline_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfsup.encoders import ResNetEncoder

    export = pipeline_run[0] / "encoder"
    cache = pipeline_run[0].parent / "cache"
    overrides = [
        *FAST_DATA,
        *PROBE,
        f"+encoders.mine={export}",
        f"paths.run_dir={tmp_path / 'probe'}",
        f"paths.cache_dir={cache}",
    ]
    # The pipeline already extracted these features: the probe stage reads them back, no forward pass.
    monkeypatch.setattr(
        ResNetEncoder, "forward_features", lambda *a: pytest.fail("features were re-extracted")
    )
    results = probe(make_cfg(overrides, config_name="probe"))
    assert list(results["linear_probe"]["encoders"]) == ["mine"] and list(results["knn"]["encoders"]) == [
        "mine"
    ]
    saved = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert {k: saved[k] for k in ("linear_probe", "knn")} == {k: results[k] for k in ("linear_probe", "knn")}
    # The same features and probe seeds as the pipeline's pretrained encoder: the same accuracies.
    pipeline_probe = json.loads((pipeline_run[0] / "metrics.json").read_text())["linear_probe"]
    assert (
        results["linear_probe"]["encoders"]["mine"]["layers"]["pooled"]["top1"]
        == pipeline_probe["encoders"]["pretrained"]["layers"]["pooled"]["top1"]
    )


def test_multi_layer_and_augmented_probes(make_cfg, pipeline_run: tuple[Path, dict], tmp_path: Path) -> None:
    export = pipeline_run[0] / "encoder"
    common = [
        *FAST_DATA,
        f"+encoders.mine={export}",
        "eval.linear_probe.epochs=1",
        "eval.linear_probe.seeds=[0]",
    ]
    multi = probe(
        make_cfg([*common, "eval=multilayer", f"paths.run_dir={tmp_path / 'multi'}"], config_name="probe")
    )
    layers = multi["linear_probe"]["encoders"]["mine"]["layers"]
    assert list(layers) == ["stem", "stage1", "stage2", "stage3", "stage4", "pooled"]
    assert layers["stem"]["grid"] == 8  # 64 channels of 8x8 after the stem of a 32 px image
    assert layers["stem"]["dim"] == 64 * 8 * 8 and layers["stage4"]["dim"] == 512
    augmented = [
        "eval.linear_probe.mode=augmented",
        "eval.linear_probe.layers=[stage3,pooled]",
        f"paths.run_dir={tmp_path / 'aug'}",
    ]
    results = probe(make_cfg([*common, *augmented], config_name="probe"))
    assert results["linear_probe"]["mode"] == "augmented"
    assert list(results["linear_probe"]["encoders"]["mine"]["layers"]) == ["stage3", "pooled"]


def test_labels_that_were_metadata_keys_and_a_resnet_beside_a_vit(
    make_cfg, pipeline_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """``+encoders.layers=`` and ``+encoders.ks=`` are encoders like any other, each with its own layers."""
    from selfsup.encoders import ViTEncoder, save

    vit = save(
        ViTEncoder(image_size=32, patch_size=8, width=32, depth=2, num_heads=2),
        tmp_path / "vit",
        {"image_size": 32},
    )
    cfg = make_cfg(
        [*FAST_DATA, "eval=multilayer", "eval.linear_probe.epochs=1", "eval.linear_probe.seeds=[0]",
         f"+encoders.layers={pipeline_run[0] / 'encoder'}", f"+encoders.ks={vit}", f"paths.run_dir={tmp_path / 'run'}"],
        config_name="probe",
    )  # fmt: skip
    probe(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    probes = ProbeResults.from_dict(saved["linear_probe"])
    assert list(probes.encoders) == ["layers", "ks"]
    assert list(probes.encoders["layers"].layers) == [
        "stem",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "pooled",
    ]
    assert list(probes.encoders["ks"].layers) == ["patch_embed", "block1", "block2", "pooled"]
    assert probes.encoders["ks"].layers["pooled"].dim == 32
    assert saved["knn"]["ks"] == [20, 200] and list(saved["knn"]["encoders"]) == ["layers", "ks"]


def test_embeddings_file_and_map(make_cfg, tmp_path: Path) -> None:
    import numpy as np

    from selfsup.stages.embed import embed

    run(make_cfg([*FAST, *PROBE], config_name="pipeline"))
    out = tmp_path / "embed"
    results = embed(
        make_cfg(
            [*FAST_DATA, f"encoder_path={tmp_path / 'run' / 'encoder'}", f"paths.run_dir={out}"],
            config_name="embed",
        )
    )
    data = np.load(out / "embeddings.npz")
    assert data["features"].shape == (64, 512) and data["labels"].shape == (64,)
    assert data["paths"][0].startswith("synthetic") and list(data["classes"]) == [
        f"class{i}" for i in range(4)
    ]
    assert Path(results["figure"]).is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["encoder=vit_tiny", "eval.linear_probe.layers=[stage3]"],
            r"'eval.linear_probe.layers'.*unknown layer.*block12",
        ),
        (
            ["encoder=vit_tiny", "eval.linear_probe.layers=[pooled]", "eval.knn.layer=stage3"],
            r"'eval.knn.layer'.*unknown layer",
        ),
        (["eval.knn.temperature=0"], r"'eval.knn.temperature': must be a positive number"),
        (
            ["eval.linear_probe.optimizer=lamb"],
            r"'eval.linear_probe.optimizer': must be one of \['adamw', 'sgd', 'lars'\]",
        ),
        (
            ["encoder=vit_tiny", "+data@downstream=synthetic", "downstream.image_size=40"],
            r"'downstream.image_size'.*40 px is not a multiple of the ViT's patch size 16",
        ),
    ],
    ids=["probe-layer", "knn-layer", "knn-temperature", "probe-optimizer", "downstream-size"],
)
def test_eval_settings_are_checked_against_the_encoder_before_pretraining(
    make_cfg, tmp_path: Path, overrides: list[str], message: str
) -> None:
    from selfsup.errors import ConfigError

    cfg = make_cfg([*FAST, *overrides], config_name="pipeline")
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists(), "the error comes before any training"


def test_under_ddp_only_rank_zero_evaluates(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    import selfsup.stages.pipeline as pipeline

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setattr(pipeline, "evaluate_frozen", lambda *a, **k: pytest.fail("rank 1 evaluated"))
    metrics = run(make_cfg([*FAST, *PROBE], config_name="pipeline"))
    assert set(metrics) == {"pretrain"} and not (tmp_path / "run" / "report.md").exists()


def test_probe_of_a_missing_export_is_named(make_cfg, tmp_path: Path) -> None:
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'encoders.mine'.*no exported encoder"):
        probe(make_cfg([*FAST_DATA, f"+encoders.mine={tmp_path}"], config_name="probe"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / args[0]
    if not script.exists():
        pytest.skip(f"{args[0]} is not installed in this environment")
    return subprocess.run(
        [str(script), *args[1:]], capture_output=True, text=True, cwd=cwd, check=False, timeout=600
    )


def test_multirun_gives_one_directory_per_job(tmp_path: Path) -> None:
    out = _cli(
        "selfsup-pretrain", "-m", "task=rotnet", "encoder=resnet18,resnet50", *FAST, "trainer.max_steps=1",
        "logger=csv", f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "multirun").glob("*/*") if p.is_dir() and p.name[0].isdigit())
    assert jobs == ["0_rotnet_resnet18", "1_rotnet_resnet50"]
    for job in (tmp_path / "multirun").glob("*/*_rotnet_*"):
        assert (job / "encoder" / "encoder.safetensors").is_file()
        assert json.loads((job / "metrics.json").read_text())["pretrain"]["steps"] == 1
    summary = next((tmp_path / "multirun").glob("*/summary.md")).read_text()
    assert "resnet18" in summary and "resnet50" in summary, "the sweep ends with one page comparing its runs"


def test_cli_reports_a_config_error_without_a_traceback(tmp_path: Path) -> None:
    out = _cli("selfsup-pretrain", *FAST, "data.batch_size=0", f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert "config key 'data.batch_size': must be a positive integer, got 0" in out.stderr
    assert "Traceback" not in out.stderr
