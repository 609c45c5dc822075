"""Errors the user can cause end in one ``error: ...`` line with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup.encoders import export
from selfsup.encoders.resnet import ResNetEncoder
from tests.conftest import FAST_DATA


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / args[0]
    if not script.exists():
        pytest.skip(f"{args[0]} is not installed in this environment")
    return subprocess.run([str(script), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=600)


def _error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def test_probe_of_an_encoder_with_non_finite_features_is_one_line(tmp_path: Path) -> None:
    encoder = ResNetEncoder(depth=18, cifar_stem=True)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.ndim == 4:
                p.mul_(1e30)  # finite weights, features that overflow to inf
    folder = export.save(encoder, tmp_path / "blown", {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    out = _cli(
        "selfsup-probe", *FAST_DATA, f"+encoders.mine={folder}", "eval=knn",
        f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    assert "non-finite" in _error_line(out) and str(folder) in _error_line(out)


def test_a_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    out = _cli(
        "selfsup-pretrain", *FAST_DATA, f"resume={bad}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert f"checkpoint {bad} is unreadable" in _error_line(out)
