"""The sweep summary over runs' metrics.json files: leaderboard rows and the freeze-versus-fine-tune plot."""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.eval.results import EncoderFinetune, FinetuneResults
from selfsup.eval.stats import SeedStats
from selfsup.reports.summary import headline_metrics, summarize


def finetune_metrics(
    fraction: float, freeze_until: str | None, pretrained: float, random_init: float
) -> dict:
    """A metrics.json as ``selfsup-finetune`` writes it, for two encoders."""

    def result(top1: float) -> EncoderFinetune:
        return EncoderFinetune(SeedStats.of([top1]), (), {"head": 1e-3}, 10, 2, 1.0)

    results = FinetuneResults(
        freeze_until=freeze_until, label_fraction=fraction, seeds=(0,), epochs=None, max_steps=2,
        batch_size=8, head_lr=1e-3, encoder_lr=1e-3, layer_decay=1.0, num_classes=4, image_size=32,
        encoders={"pretrained": result(pretrained), "random_init": result(random_init)},
    )  # fmt: skip
    return {"finetune": results.to_dict()}


def test_headline_metrics_of_a_finetune_run() -> None:
    row = headline_metrics(finetune_metrics(0.1, "stage2", 41.5, 39.0))
    assert row == {
        "freeze_until": "stage2",
        "label_fraction": 0.1,
        "finetune_pretrained": 41.5,
        "finetune_pretrained_std": 0.0,
        "finetune_random_init": 39.0,
        "finetune_random_init_std": 0.0,
    }


def test_summary_of_a_finetune_sweep(tmp_path: Path) -> None:
    settings = [(0.01, None, 30.0, 25.0), (0.1, None, 45.0, 40.0), (0.01, "stage3", 28.0, 20.0)]
    for i, setting in enumerate(settings):
        job = tmp_path / f"{i}_job"
        job.mkdir()
        (job / "metrics.json").write_text(json.dumps(finetune_metrics(*setting)))
    summary = summarize(tmp_path)
    assert summary is not None
    text = summary.read_text()
    assert "finetune_pretrained" in text and "label_fraction" in text
    for _, _, pretrained, random_init in settings:
        assert f"| {pretrained:.2f} | 0.00 | {random_init:.2f} | 0.00 |" in text
    csv_rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_rows[0] == (
        "run,settings,freeze_until,label_fraction,finetune_pretrained,finetune_pretrained_std,"
        "finetune_random_init,finetune_random_init_std"
    )
    assert csv_rows[1] == "1_job,1_job,,0.1,45.0,0.0,40.0,0.0"  # best first by finetune_pretrained
    assert not list(tmp_path.glob(".*tmp-*")), "no temporary file is left behind"
    assert (tmp_path / "summary_figures" / "finetune_label_fraction.png").stat().st_size > 1000


def test_label_fraction_lines_do_not_join_different_tasks(tmp_path: Path, monkeypatch) -> None:
    import yaml

    from selfsup.reports import plots

    drawn: dict = {}
    monkeypatch.setattr(plots, "lines", lambda points, out, *a, **k: drawn.update(points) or out)
    for i, (task, fraction) in enumerate(
        [("rotnet", 0.01), ("rotnet", 0.1), ("jigsaw", 0.01), ("jigsaw", 0.1)]
    ):
        job = tmp_path / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"task={task}", f"eval.finetune.label_fraction={fraction}", "+encoders.mine=/x"]
        hydra = {"hydra": {"runtime": {"choices": {"task": task}}, "overrides": {"task": overrides}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (job / "metrics.json").write_text(json.dumps(finetune_metrics(fraction, None, 40.0 + i, 30.0)))
    summarize(tmp_path)
    lines = {name: sorted(points) for name, points in drawn.items() if name.startswith("pretrained")}
    assert lines == {
        "pretrained, frozen until nothing (jigsaw)": [(0.01, 42.0), (0.1, 43.0)],
        "pretrained, frozen until nothing (rotnet)": [(0.01, 40.0), (0.1, 41.0)],
    }


def sweep_job(folder: Path, name: str, task: str, overrides: list[str], pretrain: dict) -> None:
    """A job folder as a sweep leaves it: .hydra/hydra.yaml, .hydra/config.yaml and metrics.json."""
    import yaml

    (folder / name / ".hydra").mkdir(parents=True)
    choices = {"task": task, "encoder": "resnet18", "data": "synthetic"}
    hydra = {"hydra": {"runtime": {"choices": choices}, "overrides": {"task": overrides}}}
    (folder / name / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    config = {"task": {"num_permutations": 100} if task == "jigsaw" else {}}
    (folder / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / name / "metrics.json").write_text(json.dumps({"pretrain": pretrain}))


def test_plot_labels_name_only_the_varying_settings(tmp_path: Path, monkeypatch) -> None:
    from selfsup.reports import plots

    shared = ["data=synthetic", "trainer.max_steps=2", "+probe.epochs=2"]
    rotnet = {"loss": 0.5, "rotation_acc": 0.8, "chance": {"rotation_acc": 0.25}}
    jigsaw = {"loss": 4.1, "jigsaw_acc": 0.1, "chance": {"jigsaw_acc": 0.01}}
    sweep_job(tmp_path, "0_rotnet", "rotnet", ["task=rotnet", *shared], rotnet)
    sweep_job(tmp_path, "1_jigsaw", "jigsaw", ["task=jigsaw", *shared], jigsaw)
    drawn: dict = {}
    real = plots.comparison
    monkeypatch.setattr(
        plots,
        "comparison",
        lambda labels, values, path, *a, **k: (
            drawn.update(labels=labels, **k) or real(labels, values, path, *a, **k)
        ),
    )
    summary = summarize(tmp_path)
    assert sorted(drawn["labels"]) == ["task=jigsaw", "task=rotnet"]
    assert sorted(drawn["chance"]) == [1.0, 25.0]  # as the tasks recorded them
    text = summary.read_text()
    assert "| task=rotnet |" in text and "pretrain_loss` is each task's own loss" in text
    assert "trainer.max_steps" not in text.split("## ")[0].split("|", 1)[1].split("\n\n")[0]
    assert (tmp_path / "summary_figures" / "pretext_acc.png").stat().st_size > 1000


def test_varying_labels_show_settings_missing_from_some_runs() -> None:
    from selfsup.reports.summary import varying_labels

    rows = [
        {"run": "a", "task": "rotnet", "overrides": "task=rotnet optim.lr=0.001"},
        {"run": "b", "task": "rotnet", "overrides": "task=rotnet"},
    ]
    assert varying_labels(rows) == ["optim.lr=0.001", "optim.lr=-"]
    assert varying_labels([{"run": "a"}, {"run": "b"}]) == ["a", "b"]


def test_negative_gains_are_drawn_left_of_a_zero_line(tmp_path: Path, monkeypatch) -> None:
    """Gains below random init are the common case of a short pretraining: their bars must show."""
    from selfsup.reports import plots

    limits: list[tuple[float, float]] = []
    real_save = plots._save

    def save(fig, path):
        limits.append(fig.axes[0].get_xlim())
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    plots.comparison(["a", "b"], [0.5, -3.0], tmp_path / "gain.png", "gain", "points")
    low, high = limits[0]
    assert low < -3.0 and high > 0.5 and (tmp_path / "gain.png").stat().st_size > 1000
