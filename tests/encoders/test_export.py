"""Export and reload: identical outputs, no task code needed, clear errors for a missing export."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup.encoders import ResNetEncoder, ViTEncoder, load, read_spec, save
from selfsup.encoders.export import identity
from selfsup.errors import DataError


@pytest.mark.parametrize(
    "encoder",
    [
        ResNetEncoder(18, cifar_stem=True),
        ViTEncoder(image_size=32, patch_size=8, width=64, depth=2, num_heads=2, pos_embed="learned"),
    ],
    ids=["resnet18", "vit"],
)
def test_round_trip_gives_identical_outputs(tmp_path: Path, encoder) -> None:
    # Change the weights and BatchNorm statistics away from their initial values first.
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(4, 3, 32, 32))
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    encoder.eval()
    save(encoder, tmp_path / "export", {"image_size": 32}, {"task": "test"})
    loaded = load(tmp_path / "export")
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(images), encoder(images))
    spec = read_spec(tmp_path / "export" / "encoder.yaml")
    assert spec["input"] == {"image_size": 32} and spec["meta"] == {"task": "test"}


def test_load_needs_no_task_code(tmp_path: Path) -> None:
    save(ResNetEncoder(18, cifar_stem=False), tmp_path / "export")
    code = (
        "import sys, selfsup.encoders as e\n"
        f"enc = e.load({str(tmp_path / 'export')!r})\n"
        "assert not any(m.startswith('selfsup.tasks') for m in sys.modules), sorted(m for m in sys.modules if 'selfsup' in m)\n"
        "print(enc.out_dim)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "512"


def test_missing_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no exported encoder at"):
        load(tmp_path / "nothing")


def test_identity_follows_the_weights_file_and_the_architecture(tmp_path: Path) -> None:
    vit = dict(image_size=16, patch_size=4, width=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    first = identity(save(ViTEncoder(**vit, pool="cls"), tmp_path / "a"))
    torch.manual_seed(0)
    assert identity(save(ViTEncoder(**vit, pool="cls"), tmp_path / "b")) == first, "same export, same id"
    torch.manual_seed(0)
    other_pool = identity(save(ViTEncoder(**vit, pool="mean"), tmp_path / "c"))
    assert other_pool != first, "same weights, other pooling: other features"
    # Weights replaced behind the yaml's back (its recorded sha256 is now stale) still change the id.
    torch.manual_seed(1)
    save(ViTEncoder(**vit, pool="cls"), tmp_path / "d")
    (tmp_path / "a" / "encoder.safetensors").write_bytes(
        (tmp_path / "d" / "encoder.safetensors").read_bytes()
    )
    assert identity(tmp_path / "a") != first
    assert not list((tmp_path / "a").glob(".*tmp*")), "no temporary files are left behind"


# One non-default value per constructor parameter, so a parameter missing from the config shows.
NON_DEFAULT = {
    ResNetEncoder: dict(depth=34, cifar_stem=True, zero_init_residual=True),
    ViTEncoder: dict(
        image_size=24,
        patch_size=8,
        width=32,
        depth=1,
        num_heads=4,
        mlp_ratio=2.0,
        pool="mean",
        pos_embed="learned",
        init="mae",
    ),
}


@pytest.mark.parametrize("cls", list(NON_DEFAULT), ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_in_the_config_and_round_trips(tmp_path: Path, cls) -> None:
    parameters = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    assert sorted(NON_DEFAULT[cls]) == sorted(parameters), "NON_DEFAULT must cover every parameter"
    encoder = cls(**NON_DEFAULT[cls])
    assert encoder.config == {"_target_": f"{cls.__module__}.{cls.__qualname__}", **NON_DEFAULT[cls]}
    loaded = load(save(encoder, tmp_path / "export"))
    assert type(loaded) is cls and loaded.config == encoder.config


def test_the_config_records_defaults_and_the_most_derived_class() -> None:
    class Wider(ResNetEncoder):
        def __init__(self, depth: int, extra: int = 3) -> None:
            super().__init__(depth, cifar_stem=True)

    assert ResNetEncoder(18, cifar_stem=False).config["cifar_stem"] is False
    assert Wider(18).config == {"_target_": f"{__name__}.{Wider.__qualname__}", "depth": 18, "extra": 3}


def test_an_encoder_constructor_with_star_args_is_refused() -> None:
    with pytest.raises(TypeError, match="named parameters only"):

        class Loose(ResNetEncoder):
            def __init__(self, *args: int) -> None:
                super().__init__(*args)


def test_an_export_whose_weights_do_not_match_its_hash_is_refused(tmp_path) -> None:
    import pytest as _pytest

    from selfsup.encoders import export as _export
    from selfsup.encoders.resnet import ResNetEncoder
    from selfsup.errors import DataError

    folder = _export.save(ResNetEncoder(depth=18, cifar_stem=True), tmp_path / "enc")
    weights = folder / _export.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    with _pytest.raises(DataError, match=r"does not match the weights_sha256 in .*encoder.yaml"):
        _export.load(folder)
    weights.write_bytes(bytes(data[: len(data) // 2]))  # half written
    with _pytest.raises(DataError, match="does not match the weights_sha256"):
        _export.load(folder)
