"""selfsup.progress: log lines when output is not a terminal, a rich bar when it is; never in the way."""

from __future__ import annotations

import io
import logging

import pytest

from selfsup import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="selfsup.progress")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "selfsup.progress"]


def test_not_a_terminal_gets_a_line_every_tenth(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    clock = iter(range(1000))  # 0.6 s per call: a tenth takes 6 s, worth a line
    monkeypatch.setattr(progress.time, "monotonic", lambda: 0.6 * next(clock))
    with progress.task("features: mine / train", total=100, unit="batches", stream=io.StringIO()) as advance:
        for _ in range(100):
            advance()
    lines = _lines(caplog)
    assert lines[0] == "features: mine / train: started (100 batches)"
    assert lines[1].startswith("features: mine / train: 10% (10/100 batches), 6s, ~54s left")
    assert len(lines) == 1 + 9 + 1, lines  # start, 10 % ... 90 %, done
    assert lines[-1].startswith("features: mine / train: done in ")


def test_a_line_every_30_seconds_when_slow(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    clock = iter([0.0, 31.0, 40.0, 62.0, 63.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.task("kNN: mine", total=1000, unit="images", stream=io.StringIO()) as advance:
        advance(1)  # at 31 s: 0.1 %, a line for the time
        advance(1)  # at 40 s: nothing
        advance(1)  # at 62 s: a line
    assert [line.split(": ", 2)[-1][:14] for line in _lines(caplog)[1:3]] == [
        "0% (1/1,000 im",
        "0% (3/1,000 im",
    ]


def test_a_task_of_a_few_seconds_logs_start_and_end_only(caplog: pytest.LogCaptureFixture) -> None:
    with progress.task(
        "probes: mine / pooled / seed 0", total=30, unit="epochs", stream=io.StringIO()
    ) as advance:
        for _ in range(30):
            advance()
    assert [line.rsplit(": ", 1)[1][:4] for line in _lines(caplog)] == ["star", "done"]


@pytest.mark.parametrize("total", [0, None])
def test_no_total_gives_start_and_end(caplog: pytest.LogCaptureFixture, total: int | None) -> None:
    with progress.task("t-SNE: 500 points", total=total, stream=io.StringIO()) as advance:
        advance()
    with progress.task("empty split", total=total, stream=io.StringIO()):
        pass
    lines = _lines(caplog)
    assert lines == ["t-SNE: 500 points: started", "t-SNE: 500 points: done in 0s", "empty split: started",
                     "empty split: done in 0s"]  # fmt: skip


def test_an_error_is_reported_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with (
        pytest.raises(KeyError),
        progress.task("probes: mine seed 0", 10, "epochs", stream=stream) as advance,
    ):
        advance(3)
        raise KeyError("boom")
    assert _lines(caplog)[-1].startswith("probes: mine seed 0: stopped after 0s at 30% (3/10 epochs)")


def test_terminal_gets_a_bar_and_a_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    assert progress.interactive(stream)
    with progress.task("features: mine", total=2, stream=stream) as outer:
        with progress.task("features: mine / train", total=0, stream=stream) as inner:
            inner(5)
        outer(2)
    assert _lines(caplog) == [], "a terminal gets the bar, not log lines"
    text = stream.getvalue()
    assert "features: mine / train: done in 0s" in text and "features: mine: done in 0s" in text
    assert progress._BarTask._progress is None, "the display stops with its last task"


def test_other_ranks_stay_silent(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    stream = _Terminal()
    with progress.task("features", total=3, stream=stream) as advance:
        advance(3)
    assert _lines(caplog) == [] and stream.getvalue() == ""


def test_streams_without_isatty_are_not_terminals() -> None:
    assert not progress.interactive(io.StringIO())
    assert not progress.interactive(object())  # type: ignore[arg-type]
