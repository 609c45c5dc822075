"""A paper preset's published numbers beside ours: in a real sweep's summary.md and a run's report.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from selfsup.errors import ConfigError
from selfsup.reports.published import (
    PublishedRun,
    check_published,
    comparison_rows,
    protocol_overrides,
    published_entries,
    same_value,
)
from tests.conftest import FAST

BIN = Path(sys.executable).parent
# RotNet's Table 1 (CIFAR-10, the non-linear classifier on every block), as the preset lists it.
TABLE_1 = {
    3: [85.45, 88.26, 62.09],
    4: [85.07, 89.06, 86.21, 61.73],
}


def table_rows(text: str, label: str) -> list[list[str]]:
    """The cells of the markdown rows whose first cell is ``label``, under "Beside the published numbers"."""
    section = text.split("## Beside the published numbers", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
    ]
    return [r for r in rows if r[0] == label]


def test_a_per_block_sweep_renders_table_1_beside_ours(tmp_path: Path) -> None:
    """The reproduction.md sweep (3- and 4-block RotNets, every block probed) as a user runs it, tiny."""
    overrides = [
        "experiment=rotnet_nin_paper",
        "encoder.num_blocks=3,4",
        "eval=rotnet_nonlinear",
        "eval.linear_probe.layers=all",
        "eval.linear_probe.epochs=1",
        "report.embedding=null",
    ]
    args = [
        str(BIN / "selfsup"),
        "-m",
        *FAST,
        "trainer.accelerator=cpu",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    result = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    header = table_rows(summary, "run")[0]
    assert header[1:6] == ["numbers", "probe_block1", "probe_block2", "probe_block3", "probe_block4"]
    for blocks, paper in TABLE_1.items():
        rows = table_rows(summary, f"encoder.num_blocks={blocks}")
        ours, published, gap = rows
        assert published[1] == f"Gidaris et al. 2018, Table 1 (RotNet, {blocks} blocks)"
        assert [float(c) for c in published[2 : 2 + blocks]] == paper
        assert ours[1] == "ours (final epoch)"
        measured = [float(c) for c in ours[2 : 2 + blocks]]
        assert all(0 <= m <= 100 for m in measured)
        assert [float(c) for c in gap[2 : 2 + blocks]] == pytest.approx(
            [m - p for m, p in zip(measured, paper, strict=True)], abs=0.011
        )
        assert "data=synthetic" in ours[-1] and "trainer.max_steps=2" in ours[-1], "how the run departs"
        assert "paths." not in ours[-1] and "hydra." not in ours[-1]
        assert "encoder.num_blocks" not in ours[-1] and "eval=" not in ours[-1], "what selects the row"
    assert "the official code reports the best test epoch" in summary
    # Each job's own report says the same, for itself.
    job = next(p for p in (tmp_path / "sweep").glob("*") if (p / "report.md").is_file())
    report = (job / "report.md").read_text()
    assert len(table_rows(report, "this run")) == 3


def test_a_run_no_paper_describes_shows_no_published_numbers(make_cfg) -> None:
    cfg = make_cfg(["experiment=rotnet_nin_paper"], config_name="pipeline")
    entries = published_entries(cfg)
    assert [e.matches(cfg, {"eval": "main"}) for e in entries] == [False] * 4, "another eval, another number"
    assert published_entries(make_cfg([], config_name="pipeline")) == []
    assert comparison_rows([PublishedRun("run", {}, [])]) is None


def test_another_preset_that_inherits_the_numbers_is_a_departure(make_cfg) -> None:
    """rotnet_nin_official (200 epochs) shows Table 1 too, and says it is not the paper's preset."""
    cfg = make_cfg(["experiment=rotnet_nin_official"], config_name="pipeline")
    choices = {"experiment": "rotnet_nin_official", "eval": "rotnet_nonlinear"}
    entry = next(e for e in published_entries(cfg) if e.matches(cfg, choices))
    assert entry.numbers["probe_block2"] == 89.06
    run = PublishedRun("run", {"probe_block2": 50.0}, ["data.path=/d"], choices, [entry])
    assert run.departures(entry) == ["experiment=rotnet_nin_official"]
    paper = PublishedRun("run", {}, ["data.path=/d"], {**choices, "experiment": "rotnet_nin_paper"}, [entry])
    assert paper.departures(entry) == []


def test_values_compare_as_a_user_means_them() -> None:
    assert same_value(4, 4.0) and same_value("rotnet_conv", "rotnet_conv")
    assert not same_value("4", 4) and not same_value(True, 1) and not same_value(None, "null")


def test_a_when_key_that_names_nothing_is_refused(make_cfg) -> None:
    """A misspelled selector would never match, and the paper's numbers would silently not be shown."""
    cfg = make_cfg(["experiment=rotnet_nin_paper"], config_name="pipeline")
    check_published(cfg, {"eval": "rotnet_nonlinear"})
    cfg.published[0].when = {"encoder.num_block": 3}
    with pytest.raises(ConfigError) as error:
        check_published(cfg, {"eval": "rotnet_nonlinear"})
    assert error.value.key == "published[0].when.encoder.num_block"


def test_failed_jobs_and_jobs_without_hydra_files_get_no_published_rows(tmp_path: Path) -> None:
    import json

    import yaml

    from selfsup.reports.summary import summarize

    config = {"published": [{"source": "S", "when": {"eval": "x"}, "numbers": {"probe_pooled": 80.0}}]}
    hydra = {"hydra": {"runtime": {"choices": {"eval": "x"}}, "overrides": {"task": ["seed=1"]}}}
    for name, metrics in [("0_failed", {"error": {"type": "E", "message": "m"}}), ("1_bare", {})]:
        job = tmp_path / "nested" / name
        (job / ".hydra").mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps({"pretrain": {"steps": 1}, **metrics}))
        if name != "1_bare":
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
            (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    summary = summarize(tmp_path)
    assert summary is not None
    text = summary.read_text()
    assert "Beside the published numbers" not in text and "## Failed jobs" in text


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"when": {"eval": "x"}, "numbers": {"probe_block2": 1.0}}, "published[0].source"),
        (
            {"source": "s", "when": {"eval": "x"}, "numbers": {"probe_block2": "high"}},
            "published[0].numbers.probe_block2",
        ),
        ({"source": "s", "when": {"eval": "x"}, "numbers": {"probe_a": 1}, "table": 1}, "published[0].table"),
        ({"source": "s", "when": {"eval": "x"}, "numbers": {"top1": 1}}, "published[0].numbers.top1"),
    ],
)
def test_a_malformed_entry_is_named(entry: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        published_entries(OmegaConf.create({"published": [entry]}))
    assert error.value.key == key


def test_a_malformed_entry_stops_the_main_job_before_it_trains(tmp_path: Path) -> None:
    args = [
        str(BIN / "selfsup"),
        *FAST,
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        "published=[{source: s, when: {eval: main}, numbers: {probe_pooled: high}}]",
    ]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "published[0].numbers.probe_pooled" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "run" / "encoder").exists(), "nothing trained"


def test_protocol_overrides_leave_out_where_things_are() -> None:
    given = ["experiment=rotnet_nin_paper", "data.path=/d", "paths.cache_dir=/c", "trainer.max_epochs=5"]
    assert protocol_overrides(given) == ["trainer.max_epochs=5"]
    chosen = ["eval=rotnet_nonlinear", "encoder.num_blocks=3", "encoder.num_blocks_x=1", "trainer=gpu"]
    assert protocol_overrides(chosen, ["eval", "encoder.num_blocks"]) == [
        "encoder.num_blocks_x=1",
        "trainer=gpu",
    ]
    assert protocol_overrides(["hydra/launcher=submitit_slurm", "eval.linear_probe.layers=all"]) == []
