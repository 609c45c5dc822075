"""Every option of every config group composes and builds; bad values fail early with the key named."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup.config import auto_num_workers, check_complete, check_data
from selfsup.data.datamodule import ImageDataModule
from selfsup.data.shards import write_shards
from selfsup.data.sources import FolderImages
from selfsup.encoders.base import Encoder
from selfsup.errors import ConfigError
from selfsup.stages import components
from selfsup.stages.components import build_datamodule, build_encoder, build_task
from selfsup.stages.pretrain import pretrain
from selfsup.tasks.base import PretextTask
from selfsup.training.trainer import build_trainer, instantiate_each
from tests.conftest import FAST, options

NEEDS_GPU = {"gpu", "gpu_fast", "ddp"}


def _image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from torchvision.io import write_png

    for c in range(classes):
        for split in ("train", "test"):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                write_png(torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8), str(folder / f"{i}.png"))
    return root


@pytest.mark.parametrize("name", options("encoder"))
def test_every_encoder_builds(make_cfg, name: str) -> None:
    encoder = build_encoder(make_cfg([f"encoder={name}", "data.image_size=32"]))
    assert isinstance(encoder, Encoder)
    assert encoder.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, encoder.out_dim)


@pytest.mark.parametrize("name", options("task"))
def test_every_task_builds(make_cfg, name: str) -> None:
    """With its default options, on a small ResNet or a small ViT; refusing one kind with a ConfigError."""
    built = []
    for encoder in (
        ["encoder=resnet18", "encoder.cifar_stem=true"],
        ["encoder=vit_tiny", "encoder.patch_size=4"],
    ):
        cfg = make_cfg([f"task={name}", *encoder, *FAST, "data.image_size=64"])
        try:
            task = build_task(cfg, build_encoder(cfg))
        except ConfigError as e:
            assert e.key and e.problem, "a refusal must name the key and the reason"
            continue
        assert isinstance(task, PretextTask)
        built.append(encoder[0])
    assert built, f"task {name} builds with neither a ResNet nor a ViT"


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_builds(make_cfg, tmp_path: Path, name: str) -> None:
    folder = _image_folder(tmp_path / "images")
    paths = {"folder": folder, "imagefolder": folder}
    if name == "shards":  # a shard set written from the folder's images
        paths[name] = write_shards(FolderImages(folder, labeled=False), tmp_path / "shards", 4).root
    cfg = make_cfg([f"data={name}", f"data.path={paths[name]}"] if name in paths else [f"data={name}"])
    datamodule = instantiate(cfg.data, num_workers=0)  # build_datamodule resolves num_workers=auto
    assert isinstance(datamodule, ImageDataModule)
    if name in ("cifar10", "cifar100", "stl10"):  # not on this machine: a clear error, nothing downloaded
        with pytest.raises(ConfigError, match=r"not found under .*download=true"):
            build_datamodule(cfg, ["pretrain"])
        return
    splits = [s for s in ("pretrain", "train", "test") if datamodule.has(s)]
    datamodule = build_datamodule(cfg, splits)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].dtype == torch.uint8
    assert batch["image"].shape[1:] == (3, cfg.data.image_size, cfg.data.image_size)


@pytest.mark.parametrize("name", options("trainer"))
def test_every_trainer_builds(make_cfg, name: str) -> None:
    cfg = make_cfg([f"trainer={name}"])
    if name in NEEDS_GPU and not torch.cuda.is_available():
        pytest.skip("needs a GPU to instantiate; composed fine")
    build_trainer(cfg)


@pytest.mark.parametrize("name", options("optim"))
def test_every_optimizer_builds(make_cfg, name: str) -> None:
    cfg = make_cfg([f"optim={name}"])
    factory = instantiate(cfg.optim.optimizer)
    optimizer = factory(torch.nn.Linear(2, 2).parameters(), lr=cfg.optim.lr)
    assert optimizer.param_groups[0]["lr"] == cfg.optim.lr


@pytest.mark.parametrize("name", options("schedule"))
def test_every_schedule_builds(make_cfg, name: str) -> None:
    cfg = make_cfg([f"schedule={name}"])
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=100)
    for _ in range(100):
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_builds(make_cfg, name: str) -> None:
    cfg = make_cfg([f"logger={name}"])
    for logger in instantiate_each(cfg.logger):
        logger.log_metrics({"x": 1.0}, step=0)


@pytest.mark.parametrize("name", options("callbacks"))
def test_every_callback_set_builds(make_cfg, name: str) -> None:
    assert instantiate_each(make_cfg([f"callbacks={name}"]).callbacks)


@pytest.mark.parametrize("name", options("eval"))
def test_every_eval_option_composes(make_cfg, name: str) -> None:
    cfg = make_cfg([f"eval={name}"], config_name="pipeline")
    check_complete(cfg)


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(make_cfg, name: str) -> None:
    cfg = make_cfg([f"experiment={name}"], config_name="pipeline")
    check_complete(cfg)
    OmegaConf.resolve(cfg.data)


@pytest.mark.parametrize("config_name", ["pipeline", "pretrain"])
@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_trains_for_what_it_says(make_cfg, name: str, config_name: str) -> None:
    """An experiment's length is its own under `selfsup` and `selfsup-pretrain` alike: the main job's
    400-step budget (conf/pipeline.yaml) must not cap a 100-epoch protocol."""
    import yaml

    from tests.conftest import CONF

    doc = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text()) or {}
    if config_name == "pretrain" and any("/eval" in str(entry) for entry in doc.get("defaults", [])):
        pytest.skip(f"experiment={name} sets the evaluation: a preset of `selfsup` only")
    trainer = doc.get("trainer") or {}
    cfg = make_cfg([f"experiment={name}"], config_name=config_name)
    if "max_epochs" in trainer:
        assert cfg.trainer.max_epochs == trainer["max_epochs"]
        assert cfg.trainer.max_steps == trainer.get("max_steps", -1), (
            f"experiment={name} says {trainer['max_epochs']} epochs but {config_name} caps it at "
            f"{cfg.trainer.max_steps} steps"
        )
    if "max_steps" in trainer:
        assert cfg.trainer.max_steps == trainer["max_steps"]


def test_slurm_launcher_composes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module("selfsup.conf", version_base="1.3"):
        cfg = compose(
            "pretrain",
            overrides=["hydra/launcher=slurm", f"paths.run_dir={tmp_path}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "allowed"), [("task=jigsw", "rotnet"), ("encoder=resnet99", "resnet18")]
)
def test_unknown_option_lists_the_allowed_ones(make_cfg, override: str, allowed: str) -> None:
    with pytest.raises(MissingConfigException, match=f"(?s)Available options.*{allowed}"):
        make_cfg([override])


def test_unknown_key_is_named(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match="bsz"):
        make_cfg(["data.bsz=8"])


def test_missing_mandatory_path_is_named(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"'data.path'"):
        pretrain(make_cfg(["data=folder"]))


def test_missing_folder_is_named_and_nothing_is_written(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["data=folder", f"data.path={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"'data.path'.*nowhere.*does not exist"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_an_empty_data_path_does_not_scan_the_working_directory(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'data.path': is empty"):
        pretrain(make_cfg(["data=folder", "data.path="]))
    assert not (tmp_path / "run").exists()


def test_a_data_path_that_is_a_file_is_named(make_cfg, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'data.path'.*photo.jpg is a file; data.pretrain reads a folder"):
        pretrain(make_cfg(["data=imagefolder", f"data.path={tmp_path / 'photo.jpg'}"]))
    with pytest.raises(ConfigError, match=r"'data.path'.*photo.jpg is a file"):
        pretrain(make_cfg(["data=folder", f"data.path={tmp_path / 'photo.jpg'}"]))


def test_zero_batch_size_is_named(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"'data.batch_size': must be a positive integer, got 0"):
        pretrain(make_cfg([*FAST, "data.batch_size=0"]))


def test_image_too_small_for_the_encoder(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"'data.image_size'.*at least 32 px.*cifar_stem=true \(or auto\)"):
        pretrain(make_cfg([*FAST, "data.image_size=16", "encoder.cifar_stem=false"]))
    with pytest.raises(ConfigError, match=r"'data.image_size'.*at least 8 px, got 4 px"):
        pretrain(
            make_cfg([*FAST, "data.image_size=4"])
        )  # auto took the small stem, and it is still too small


def test_vit_patch_must_divide_the_image(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"'encoder'.*not a multiple of patch_size 5"):
        build_encoder(make_cfg(["encoder=vit_tiny", "encoder.patch_size=5"]))
    with pytest.raises(ConfigError, match=r"'data.image_size'.*not a multiple of the ViT's patch size 16"):
        pretrain(make_cfg([*FAST, "encoder=vit_tiny", "encoder.image_size=32", "data.image_size=40"]))


def test_bad_choice_values_are_named(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"'data.on_bad_image': must be one of \['skip', 'error'\]"):
        pretrain(make_cfg([*FAST, "data.on_bad_image=ignore"]))
    with pytest.raises(ConfigError, match=r"'task'.*rotations must be one of"):
        pretrain(make_cfg([*FAST, "task.rotations=some"]))


@pytest.mark.parametrize("name", options("eval"))
def test_every_eval_option_says_how_features_are_extracted(make_cfg, name: str) -> None:
    """The section that extracts features (linear_probe, else knn) holds the settings; no code default."""
    cfg = make_cfg([f"eval={name}"], config_name="probe")
    section = cfg.eval.get("linear_probe") or cfg.eval.get("knn")
    if section is None:
        assert set(cfg.eval) == {"finetune"}, "only fine-tuning runs without frozen features"
        return
    assert {"token_pool", "cache", "device"} <= set(section)


def test_require_number_and_check_exports_name_the_key(make_cfg, tmp_path: Path) -> None:
    from selfsup.config import check_exports, require_number

    cfg = make_cfg(["eval=finetune", "eval.finetune.label_smoothing=1"], config_name="finetune")
    with pytest.raises(ConfigError, match=r"'eval.finetune.label_smoothing': must be in \[0, 1\), got 1$"):
        require_number(cfg, "eval.finetune.label_smoothing", "in [0, 1)", lambda v: 0 <= v < 1)
    assert (
        require_number(cfg, "eval.finetune.weight_decay", "a non-negative number", lambda v: v >= 0) == 0.05
    )
    with pytest.raises(
        ConfigError, match=rf"'encoders.layers': no exported encoder at {tmp_path} \(expected encoder.yaml"
    ):
        check_exports({"layers": tmp_path})
    with pytest.raises(ConfigError, match=r"'encoder_path': no exported encoder"):
        check_exports({"encoder_path": tmp_path}, prefix="")


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 2), (4, 3), (9, 8), (64, 8)])
def test_auto_num_workers_leaves_a_core_and_is_capped(cores: int, workers: int) -> None:
    assert auto_num_workers(cores) == workers


def test_num_workers_auto_is_the_default_and_resolved_where_the_datamodule_is_built(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _image_folder(tmp_path / "images")
    cfg = make_cfg(["data=folder", f"data.path={folder}"])
    assert cfg.data.num_workers == "auto", "the base loader settings default to the machine's cores"
    monkeypatch.setattr(components, "usable_cores", lambda: 5)
    monkeypatch.setattr(components, "_logged_workers", set())
    caplog.set_level(logging.INFO, logger="selfsup.stages.components")
    assert build_datamodule(cfg, ["pretrain"]).num_workers == 4
    assert build_datamodule(cfg, ["pretrain"]).num_workers == 4
    lines = [r.getMessage() for r in caplog.records if "num_workers=auto" in r.getMessage()]
    assert lines == ["data.num_workers=auto: 4 decoding workers (5 usable cores)"], "logged once"
    explicit = make_cfg(["data=folder", f"data.path={folder}", "data.num_workers=0"])
    assert build_datamodule(explicit, ["pretrain"]).num_workers == 0


@pytest.mark.parametrize("value", ["many", -1, 1.5])
def test_num_workers_is_a_count_or_auto(make_cfg, value: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.num_workers"):
        check_data(make_cfg([f"data.num_workers={value}"]))


def test_the_embedded_data_keeps_decoding_in_the_main_process(make_cfg) -> None:
    assert make_cfg(["data=embedded"]).data.num_workers == 0
    assert make_cfg(["data=synthetic"]).data.num_workers == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.crop=center", r"'data.crop': must be one of \['random_resized', 'padded'\]"),
        ("data.crop_padding=-1", r"'data.crop_padding': must be a non-negative integer"),
    ],
)
def test_a_bad_crop_is_refused_before_anything_runs(make_cfg, override: str, message: str) -> None:
    from selfsup.config import check_data

    with pytest.raises(ConfigError, match=message):
        check_data(make_cfg([override]))
