"""The linear probe: BatchNorm without affine parameters, learns separable data, seeded."""

from __future__ import annotations

import torch

from selfsup.eval.linear_probe import LinearProbe, fit_linear_probe


def test_probe_is_linear_with_a_parameter_free_norm() -> None:
    probe = LinearProbe(16, 3)
    assert probe.norm.weight is None and probe.norm.bias is None
    assert sum(p.numel() for p in probe.parameters()) == 16 * 3 + 3


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = torch.randn(4, 10, generator=torch.Generator().manual_seed(99)) * 3
    return centres[labels] + torch.randn(
        n, 10, generator=g
    ) + 100.0, labels  # large offset: the norm handles it


def test_probe_learns_separable_features() -> None:
    (x, y), (xt, yt) = _blobs(400, 0), _blobs(200, 1)
    result = fit_linear_probe(x, y, xt, yt, num_classes=4, epochs=20, batch_size=64, lr=1e-2)
    assert result.test_top1 > 95


def test_probe_is_reproducible_for_a_seed() -> None:
    (x, y), (xt, yt) = _blobs(300, 0), _blobs(100, 1)
    y = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(5))  # noisy labels: seeds matter
    runs = [fit_linear_probe(x, y, xt, yt, 4, epochs=3, batch_size=32, seed=s).test_top1 for s in (0, 0, 1)]
    assert runs[0] == runs[1]
