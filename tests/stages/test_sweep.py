"""``-m`` sweeps: every job checked before the first trains, a failed job never sinks the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selfsup import cli
from selfsup.stages import sweep
from tests.conftest import FAST

BIN = Path(sys.executable).parent


def run_sweep(folder: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    """``selfsup-pretrain -m`` with the fast settings, its sweep under ``folder/sweep``."""
    args = [
        str(BIN / "selfsup-pretrain"),
        "-m",
        *FAST,
        "trainer.accelerator=cpu",
        f"paths.cache_dir={folder / 'cache'}",
        f"hydra.sweep.dir={folder / 'sweep'}",
        *overrides,
    ]
    return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_a_refused_job_stops_the_sweep_before_any_job_trains(tmp_path: Path) -> None:
    result = run_sweep(tmp_path, ["optim.lr=1e-3,-1"])
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "job #1 (optim.lr=-1)" in errors[0] and "optim.lr" in errors[0]
    assert not list((tmp_path / "sweep").rglob("encoder")), "no job trained"


def test_a_job_failing_mid_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # lr=1e30 passes the checks and makes the weights non-finite in training: NonFiniteError.
    result = run_sweep(tmp_path, ["optim.lr=1e30,1e-3"])
    assert result.returncode == 2, result.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]_*"))
    assert len(jobs) == 2
    failed = json.loads((jobs[0] / "metrics.json").read_text())
    assert failed["error"]["type"] == "NonFiniteError" and failed["error"]["traceback"]
    assert (jobs[1] / "encoder").is_dir(), "the job after the failed one trained"
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "## Failed jobs" in summary and jobs[0].name in summary and "NonFiniteError" in summary
    assert "1 job(s) of the sweep failed" in result.stderr


def test_a_single_run_writes_no_sweep_summary(tmp_path: Path) -> None:
    """Hydra calls the sweep callback's on_job_end for a single run too; nothing of a sweep is written."""
    args = [
        str(BIN / "selfsup-pretrain"),
        *FAST,
        "trainer.accelerator=cpu",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    result = subprocess.run(
        [*args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.output_root={tmp_path / 'outputs'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "multirun" not in output, "a single run looked for a sweep to summarize"
    assert not (tmp_path / "outputs" / "multirun").exists()


def test_any_exception_in_a_sweep_job_is_recorded_not_raised(tmp_path: Path, monkeypatch) -> None:
    def broken(cfg):
        raise RuntimeError("a bug in the stage")

    monkeypatch.setattr(sweep, "in_multirun", lambda: True)
    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path)}})
    task_function = cli._entry("pretrain", broken).__closure__  # the wrapped task function
    function = next(
        c.cell_contents for c in task_function if callable(c.cell_contents) and c.cell_contents is not broken
    )
    function(cfg)  # returns: the sweep goes on
    error = json.loads((tmp_path / "metrics.json").read_text())["error"]
    assert error["type"] == "RuntimeError" and error["message"] == "a bug in the stage"
    assert any("a bug in the stage" in line for line in error["traceback"])


def test_a_single_run_still_raises_what_is_not_a_selfsup_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep, "in_multirun", lambda: False)
    task = cli._entry("pretrain", lambda cfg: 1 / 0).__closure__
    function = next(
        c.cell_contents
        for c in task
        if callable(c.cell_contents) and c.cell_contents.__name__ == "task_function"
    )
    with pytest.raises(ZeroDivisionError):
        function(OmegaConf.create({"paths": {"run_dir": str(tmp_path)}}))


# -- the README's sweeps, as written ------------------------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"
CONFIG_OF = {"selfsup": "pipeline", "selfsup-pretrain": "pretrain"}


def readme_sweeps() -> list[tuple[str, list[str]]]:
    """``(command, overrides)`` of every ``selfsup -m`` / ``selfsup-pretrain -m`` line in the README.

    Sweeps that need a cluster (a launcher) or a folder that is not here (``<placeholder>``, a
    ``data.path``) are left out: the others run as written on the embedded data.
    """
    found = []
    for line in README.read_text().splitlines():
        words = line.split("#")[0].split()
        if len(words) < 2 or words[1] != "-m" or Path(words[0]).name not in CONFIG_OF:
            continue
        overrides = words[2:]
        if any("<" in w or w.startswith(("hydra/launcher", "data.path")) or w == "\\" for w in overrides):
            continue
        found.append((Path(words[0]).name, overrides))
    return found


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a basic sweep: the cartesian product of the comma-separated values."""
    import itertools

    choices = [[f"{o.split('=')[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in overrides]
    return [list(job) for job in itertools.product(*choices)]


def test_the_readme_has_the_task_comparison_sweeps() -> None:
    sweeps = [" ".join(overrides) for _, overrides in readme_sweeps()]
    assert "task=rotnet,jigsaw,simmim" in sweeps
    assert "task=mae,simmim encoder=vit_tiny" in sweeps


@pytest.mark.parametrize(
    ("command", "overrides"), readme_sweeps(), ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_every_job_of_a_readme_sweep_passes_the_up_front_checks(
    tmp_path: Path, command: str, overrides: list[str]
) -> None:
    from tests.conftest import compose_in

    check = sweep.STAGE_CHECKS[CONFIG_OF[command]]
    for job in sweep_jobs(overrides):
        check(compose_in(tmp_path, job, CONFIG_OF[command]))  # a refusal raises ConfigError, naming it


def test_a_probe_sweep_is_checked_up_front_too(tmp_path: Path) -> None:
    from selfsup.encoders import ResNetEncoder, export

    export.save(ResNetEncoder(18, cifar_stem=True), tmp_path / "mine", {"image_size": 32})
    args = [
        str(BIN / "selfsup-probe"),
        "-m",
        *[o for o in FAST if not o.startswith(("trainer.", "callbacks."))],
        f"+encoders.mine={tmp_path / 'mine'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "eval.linear_probe.epochs=1,0",
    ]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "job #1 (eval.linear_probe.epochs=0)" in errors[0], result.stderr[-3000:]
    assert not list((tmp_path / "sweep").rglob("metrics.json")), "no job ran"
