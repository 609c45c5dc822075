"""The probe heads: RotNet's non-linear and conv classifiers as the official code builds them, and
that the configured head and schedule are what the probes train with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from selfsup.eval.features import FeatureSet, pool_feature
from selfsup.eval.linear_probe import fit_linear_probes
from selfsup.eval.probe_heads import ConvProbe, LinearProbe, MLPProbe, ProbeHead
from tests.conftest import FAST_DATA, compose_in


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mlp_head_is_rotnets_non_linear_classifier() -> None:
    """NonLinearClassifier.py 'MultLayer' on NIN block 2 of CIFAR-10: 12288 -> 200 -> 200 -> 10."""
    head = ProbeHead("mlp", None, 192).build(192 * 8 * 8, 8, num_classes=10)
    assert isinstance(head, MLPProbe)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    first, second, last = (m for m in head.layers if isinstance(m, nn.Linear))
    assert (first.in_features, first.out_features, first.bias) == (12288, 200, None)
    assert (second.in_features, second.out_features, second.bias) == (200, 200, None)
    assert (last.in_features, last.out_features) == (200, 10) and torch.all(last.bias == 0)
    # 12288*200 + 200*200 + 200*10 + 10 weights and biases, 2 x (200 + 200) BatchNorm parameters
    assert _count(head) == 12288 * 200 + 200 * 200 + 200 * 10 + 10 + 2 * 400
    # The official initialization: N(0, 2 / out_features) for every Linear.
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    assert ProbeHead("mlp", None, 192).build(100, 1, num_classes=200).layers[0].out_features == 2048
    assert ProbeHead("mlp", 64, 192).build(100, 1, num_classes=10).layers[0].out_features == 64
    assert head(torch.randn(4, 12288)).shape == (4, 10)


def test_conv_head_is_a_nin_block_on_the_map() -> None:
    """'NIN_ConvBlock3': 3x3 conv + two 1x1 convs (192, BN, ReLU), global average pool, Linear(192, 10)."""
    head = ProbeHead("conv", None, 192).build(192 * 8 * 8, 8, num_classes=10)
    assert isinstance(head, ConvProbe) and head.in_channels == 192
    convs = [m for m in head.layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (192, 192, (3, 3), (1, 1)),
        (192, 192, (1, 1), (0, 0)),
        (192, 192, (1, 1), (0, 0)),
    ]
    assert all(c.bias is None for c in convs)
    assert _count(head) == 192 * 192 * 9 + 2 * 192 * 192 + 3 * 2 * 192 + 192 * 10 + 10
    assert convs[0].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 192)), rel=0.02)


def test_conv_head_sees_the_map_the_features_were_flattened_from() -> None:
    torch.manual_seed(0)
    maps = torch.randn(3, 16, 4, 4)
    head = ConvProbe(16 * 4 * 4, 4, num_classes=5, channels=8).eval()
    flat = pool_feature(maps, grid=4)
    assert torch.allclose(head(flat), head.layers(maps))
    with pytest.raises(ValueError, match="not a map of 3x3"):
        ConvProbe(16 * 4 * 4, 3, num_classes=5, channels=8)


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="probe head must be one of"):
        ProbeHead("deep", None, 192)
    assert isinstance(ProbeHead("linear", None, 192).build(8, 1, 3), LinearProbe)


def _xor(n: int, seed: int) -> FeatureSet:
    """Two features whose signs' XOR is the label: no linear classifier beats chance much."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return FeatureSet({"f": x}, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long())


def test_the_mlp_head_learns_what_a_linear_probe_cannot() -> None:
    train, test = _xor(1024, 0), _xor(512, 1)
    common = {
        "epochs": 15,
        "batch_size": 64,
        "lr": 0.1,
        "weight_decay": 0.0,
        "optimizer": "sgd",
        "schedule": None,
    }
    linear = fit_linear_probes(train, test, 2, **common)["f"]
    mlp = fit_linear_probes(train, test, 2, head="mlp", head_hidden_dim=32, **common)["f"]
    assert linear < 70 and mlp > 90, (linear, mlp)


def test_the_configured_schedule_is_rotnets_step_schedule(tmp_path: Path) -> None:
    """eval=rotnet_nonlinear: lr 0.1, x 0.2 at epochs 20, 40 and 45 of 50 (the official LUT_lr)."""
    cfg = compose_in(tmp_path, ["eval=rotnet_nonlinear"], config_name="probe")
    steps_per_epoch = 7
    total = int(cfg.eval.linear_probe.epochs) * steps_per_epoch
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=float(cfg.eval.linear_probe.lr))
    schedule = instantiate(cfg.eval.linear_probe.schedule)(optimizer, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    per_epoch = [rates[e * steps_per_epoch] for e in range(50)]
    expected = [0.1] * 20 + [0.02] * 20 + [0.004] * 5 + [0.0008] * 5
    assert per_epoch == pytest.approx(expected)
    for e in range(50):  # constant within each epoch: the drops land on epoch boundaries
        assert len(set(rates[e * steps_per_epoch : (e + 1) * steps_per_epoch])) == 1


@pytest.mark.parametrize(("preset", "kind"), [("rotnet_nonlinear", MLPProbe), ("rotnet_conv", ConvProbe)])
def test_rotnet_protocols_probe_the_whole_block2_map_of_a_nin(
    make_cfg, tmp_path: Path, preset: str, kind: type
) -> None:
    """`selfsup-probe eval=rotnet_nonlinear|rotnet_conv` on an exported NIN: block 2's 192x8x8 map,
    unpooled, through the paper's head, on augmented images; the head is recorded."""
    from selfsup.encoders import NINEncoder, save
    from selfsup.stages.probe import probe as run_probe

    folder = save(NINEncoder(4), tmp_path / "nin", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    built: list[nn.Module] = []
    original = ProbeHead.build

    def spy(self: ProbeHead, in_dim: int, grid: int, num_classes: int) -> nn.Module:
        built.append(original(self, in_dim, grid, num_classes))
        return built[-1]

    cfg = make_cfg(
        [*FAST_DATA, f"eval={preset}", f"+encoders.nin={folder}", "eval.linear_probe.epochs=1",
         f"paths.run_dir={tmp_path / 'run'}"],
        config_name="probe",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProbeHead, "build", spy)
        results = run_probe(cfg)["linear_probe"]
    assert results["mode"] == "augmented" and results["head"] == kind.__name__.removesuffix("Probe").lower()
    block2 = results["encoders"]["nin"]["layers"]["block2"]
    assert (block2["dim"], block2["grid"]) == (192 * 8 * 8, 8)
    assert len(built) == 1 and isinstance(built[0], kind)


def test_a_conv_head_on_a_vector_layer_is_one_config_error(make_cfg, tmp_path: Path) -> None:
    from selfsup.encoders import NINEncoder, save
    from selfsup.errors import ConfigError
    from selfsup.stages.probe import probe as run_probe

    folder = save(NINEncoder(4), tmp_path / "nin", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = make_cfg(
        [*FAST_DATA, "eval=rotnet_conv", "eval.linear_probe.layers=[pooled]", f"+encoders.nin={folder}",
         f"paths.run_dir={tmp_path / 'run'}"],
        config_name="probe",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="conv head needs a feature map, but pooled of NINEncoder"):
        run_probe(cfg)


def _mae_lars_step(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list, lr: float) -> None:
    """MAE's util/lars.py step (weight decay 0, momentum 0.9, trust 0.001), written from its source."""
    for i, (p, dp) in enumerate(zip(params, grads, strict=True)):
        if p.ndim > 1:  # not a bias or normalization parameter
            param_norm, update_norm = torch.norm(p), torch.norm(dp)
            one = torch.ones_like(param_norm)
            q = torch.where(
                param_norm > 0.0, torch.where(update_norm > 0, 0.001 * param_norm / update_norm, one), one
            )
            dp = dp.mul(q)
        bufs[i] = dp.clone() if bufs[i] is None else bufs[i].mul(0.9).add(dp)
        p.add_(bufs[i], alpha=-lr)


def test_the_lars_probe_optimizer_steps_as_maes_lars() -> None:
    pytest.importorskip("timm")
    from selfsup.eval.linear_probe import probe_optimizer

    torch.manual_seed(0)
    head = LinearProbe(6, 3).linear  # a weight matrix (adapted) and a bias (plain momentum SGD)
    reference = [p.detach().clone() for p in head.parameters()]
    optimizer = probe_optimizer(head.parameters(), "lars", lr=0.4, weight_decay=0.0)
    bufs: list = [None, None]
    for step in range(3):
        grads = [torch.randn_like(p) for p in head.parameters()]
        for p, g in zip(head.parameters(), grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        _mae_lars_step(reference, grads, bufs, lr=0.4)
        for ours, theirs in zip(head.parameters(), reference, strict=True):
            assert torch.allclose(ours, theirs, atol=1e-6), f"step {step}"
    assert [g["always_adapt"] for g in optimizer.param_groups] == [True, False]


def test_lars_without_timm_is_one_config_error(make_cfg, monkeypatch) -> None:
    import importlib.util

    from selfsup.config import check_eval_config
    from selfsup.errors import ConfigError

    cfg = make_cfg(["eval=mae_linear", "+encoders.x=/nowhere"], config_name="probe")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"eval.linear_probe.optimizer.*pip install -e '.\[lars\]'"):
        check_eval_config(cfg)


def test_maes_linear_probe_runs_on_an_exported_vit(make_cfg, tmp_path: Path) -> None:
    """eval=mae_linear: the class token, LARS, 10 of 90 epochs of warmup; here one epoch on a small ViT."""
    pytest.importorskip("timm")
    from selfsup.encoders import ViTEncoder, save
    from selfsup.stages.probe import probe as run_probe

    cfg = make_cfg(["eval=mae_linear"], config_name="probe")
    assert cfg.eval.linear_probe.schedule.warmup_fraction * 90 == pytest.approx(10, abs=1e-4)
    vit = ViTEncoder(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, init="mae")
    folder = save(vit, tmp_path / "vit", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    cfg = make_cfg(
        [*FAST_DATA, "eval=mae_linear", f"+encoders.mae={folder}", "eval.linear_probe.epochs=1",
         "eval.linear_probe.batch_size=16", f"paths.run_dir={tmp_path / 'run'}"],
        config_name="probe",
    )  # fmt: skip
    results = run_probe(cfg)["linear_probe"]
    assert results["mode"] == "augmented" and results["head"] == "linear"
    assert list(results["encoders"]["mae"]["layers"]) == ["pooled"]
