"""The source layout guard (ssl/ never shadows the standard library) and both install modes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ssl_folder_is_not_a_package() -> None:
    assert not (REPO / "ssl" / "__init__.py").exists(), (
        "ssl/__init__.py would shadow the standard library's ssl"
    )


def test_stdlib_ssl_survives_repo_and_source_root_on_path() -> None:
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import ssl, sysconfig, selfsup\n"
        "assert ssl.__file__.startswith(sysconfig.get_paths()['stdlib']), ssl.__file__\n"
        "ssl.create_default_context()\n"
        "print(selfsup.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(REPO / "ssl")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(REPO / "ssl" / "selfsup")


def test_every_subpackage_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO / "ssl").parts)
        for p in (REPO / "ssl" / "selfsup").rglob("__init__.py")
    } | {"selfsup.conf"}
    assert found == listed


def _console_script_prints_config(script: Path, env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(
        [str(script), "--cfg", "job", "encoder=resnet50"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_console_script_from_the_installed_environment(tmp_path: Path) -> None:
    """The environment's own install (editable in development) finds its configs from any directory."""
    script = Path(sys.executable).parent / "selfsup-pretrain"
    if not script.exists():
        pytest.skip("selfsup is not installed in this environment")
    out = _console_script_prints_config(script, dict(os.environ), tmp_path)
    assert "depth: 50" in out


def test_console_script_from_a_wheel(tmp_path: Path) -> None:
    """A regular (non-editable) wheel ships conf/ inside the package, and its scripts find it."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Build from a copy: setuptools writes build/ and egg-info folders into the source tree.
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".*", "outputs", "multirun", "build", "*.egg-info", "__pycache__"),
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("selfsup-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    assert (site / "selfsup" / "conf" / "pretrain.yaml").is_file()
    assert (site / "selfsup" / "data" / "embedded").is_dir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import selfsup; print(selfsup.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), "the wheel's copy must be the one imported"
    out = _console_script_prints_config(site / "bin" / "selfsup-pretrain", env, tmp_path)
    assert "depth: 50" in out
