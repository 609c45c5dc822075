"""RotNet's NIN against the official architecture (gidariss/FeatureLearningRotNet, NetworkInNetwork.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from selfsup.encoders import NINEncoder, load, save
from selfsup.stages.components import build_encoder
from tests.conftest import compose_in

# Parameters derived by hand from the official file: bias-free convolutions (in * out * k * k) and
# BatchNorm's weight and bias (2 * out) for each of a block's three convolutions.
#   block1: 3*192*25 + 192*160 + 160*96 + 2*(192+160+96)     =  61,376
#   block2: 96*192*25 + 2*192*192 + 2*3*192                  = 535,680
#   block3..5 (each): 192*192*9 + 2*192*192 + 2*3*192        = 406,656
BLOCK1, BLOCK2, LATER = 61_376, 535_680, 406_656
PARAMS = {3: BLOCK1 + BLOCK2 + LATER, 4: BLOCK1 + BLOCK2 + 2 * LATER, 5: BLOCK1 + BLOCK2 + 3 * LATER}


@pytest.mark.parametrize("num_blocks", [3, 4, 5])
def test_parameter_count_is_the_official_one(num_blocks: int) -> None:
    encoder = NINEncoder(num_blocks=num_blocks)
    assert sum(p.numel() for p in encoder.parameters()) == PARAMS[num_blocks]
    assert PARAMS[4] == 1_410_368


@pytest.mark.parametrize("num_blocks", [3, 4, 5])
def test_block_shapes_on_32px(num_blocks: int) -> None:
    # Official shapes on 32 px: MaxPool2d(3, 2, 1) after block 1 (32 -> 16, 96 channels), AvgPool2d(3, 2, 1)
    # after block 2 (16 -> 8, 192 channels), no pooling after block 3 (use_avg_on_conv3=False).
    encoder = NINEncoder(num_blocks=num_blocks)
    names = [f"block{i}" for i in range(1, num_blocks + 1)]
    assert encoder.stage_names == tuple(names)
    features = encoder.forward_features(torch.randn(2, 3, 32, 32), [*names, "pooled"])
    expected = {"block1": (2, 96, 16, 16), **{name: (2, 192, 8, 8) for name in names[1:]}}
    assert {name: tuple(features[name].shape) for name in names} == expected
    assert torch.allclose(features["pooled"], features[names[-1]].mean(dim=(2, 3)), atol=1e-6)
    assert encoder.out_dim == 192


def test_official_layer_types_and_pooling() -> None:
    encoder = NINEncoder(num_blocks=4, avg_pool_block3=True)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1, 1, 3, 1, 1]
    assert [c.out_channels for c in convs[:6]] == [192, 160, 96, 192, 192, 192]
    assert all(c.bias is None for c in convs)
    pools = [m for m in encoder.modules() if isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))]
    assert [type(p) for p in pools] == [torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AvgPool2d]
    assert all((p.kernel_size, p.stride, p.padding) == (3, 2, 1) for p in pools)
    shapes = encoder.forward_features(torch.zeros(1, 3, 32, 32), ["block3", "block4"])
    assert [tuple(t.shape[1:]) for t in shapes.values()] == [(192, 4, 4), (192, 4, 4)]


def test_forward_features_stops_after_the_deepest_request() -> None:
    encoder = NINEncoder(num_blocks=5)
    calls = []
    for block in encoder.blocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    encoder.forward_features(torch.zeros(1, 3, 32, 32), ["block2"])
    assert len(calls) == 2


def test_bad_options_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_blocks=6"):
        NINEncoder(num_blocks=6)
    with pytest.raises(ValueError, match="4 or more blocks"):
        NINEncoder(num_blocks=3, avg_pool_block3=True)
    with pytest.raises(ValueError, match="at least 4 px"):
        NINEncoder(num_blocks=4).check_image_size(3)
    NINEncoder(num_blocks=4).check_image_size(4)
    with pytest.raises(ValueError, match="unknown layer"):
        NINEncoder(num_blocks=3).check_layers(["block4"])


def test_stage_modules_cover_every_parameter_in_order() -> None:
    encoder = NINEncoder(num_blocks=4)
    stages = encoder.stage_modules()
    assert [name for name, _ in stages] == list(encoder.stage_names)
    covered = {id(p) for _, modules in stages for m in modules for p in m.parameters()}
    assert covered == {id(p) for p in encoder.parameters()}


def test_export_and_load_round_trip(tmp_path: Path) -> None:
    encoder = NINEncoder(num_blocks=3).eval()
    with torch.no_grad():  # non-default BatchNorm statistics, which the export must carry
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    save(encoder, tmp_path / "enc", input_spec={"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    loaded = load(tmp_path / "enc").eval()
    assert isinstance(loaded, NINEncoder) and loaded.config == encoder.config
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), encoder(images))


@pytest.mark.parametrize("num_blocks", [3, 5])
def test_the_yaml_builds_every_depth(tmp_path: Path, num_blocks: int) -> None:
    cfg = compose_in(tmp_path, ["encoder=nin", f"encoder.num_blocks={num_blocks}"])
    encoder = instantiate(cfg.encoder)
    assert isinstance(encoder, NINEncoder) and len(encoder.stage_names) == num_blocks
    assert isinstance(build_encoder(cfg), NINEncoder)
