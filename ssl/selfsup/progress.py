"""Progress of every step that takes more than a few seconds, in one small API.

::

    from selfsup import progress

    with progress.task("features: mine / train", total=len(loader), unit="batches") as advance:
        for batch in loader:
            ...
            advance(1)

On a terminal the task is a row of a rich progress bar (the console library of Lightning's
``RichProgressBar``); tasks opened inside one another are rows of the same display, and a finished
task leaves one summary line. Elsewhere (a log file, a pipe, a batch job) the task is logged by the
``selfsup.progress`` logger: a line when it starts, one each time another 10 % is done or 30 s have
passed (never within 5 s of the previous line), and one when it ends. ``total`` may be 0 or None (unknown): then only the start and end lines.

Only the process of global rank 0 reports progress, so that a DDP run prints each line once.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger(__name__)

Advance = Callable[..., None]
"""``advance(k=1)``: ``k`` more units are done."""

LINE_FRACTION = 0.1
"""Non-terminal output: a line each time this fraction of the total is done ..."""
LINE_SECONDS = 30.0
"""... or this many seconds have passed since the last line ..."""
LINE_MIN_SECONDS = 5.0
"""... but never sooner than this after the last one: a task of a few seconds logs its start and end."""


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal that can show a live progress bar."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _reporting() -> bool:
    """Only global rank 0 reports (torchrun and SLURM set ``RANK``)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextmanager
def task(
    description: str,
    total: float | None,
    unit: str = "",
    *,
    bar: bool | None = None,
    stream: TextIO | None = None,
) -> Iterator[Advance]:
    """Report the progress of one step; yields ``advance(k=1)``.

    Args:
        description: what runs, e.g. ``features: mine / train``.
        total: units of work (0 or None: unknown, only start and end are reported).
        unit: what a unit is, for the lines (``batches``, ``epochs``, ``images``).
        bar: a live bar (True), log lines (False), or a bar exactly when ``stream`` is a terminal (None).
            Use False around code that draws its own bar (a Lightning trainer's).
        stream: where a bar is drawn (default: stderr).
    """
    if not _reporting():
        yield _ignore
        return
    stream = sys.stderr if stream is None else stream
    use_bar = interactive(stream) if bar is None else bar
    reporter = _BarTask(description, total, stream) if use_bar else _LineTask(description, total, unit)
    ok = False
    try:
        yield reporter.advance
        ok = True
    finally:
        reporter.close(ok)


def _ignore(k: float = 1) -> None:
    """``advance`` of a process that does not report."""


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _LineTask:
    """Periodic log lines: start, every ``LINE_FRACTION`` of the total or ``LINE_SECONDS``, end."""

    def __init__(self, description: str, total: float | None, unit: str) -> None:
        self.description, self.unit = description, unit
        self.total = total if total and total > 0 else None
        self.done = 0.0
        self.started = self.last_line = time.monotonic()
        self.last_step = 0
        size = f" ({_count(self.total)} {unit})".replace(" )", ")") if self.total else ""
        log.info("%s: started%s", description, size)

    def advance(self, k: float = 1) -> None:
        self.done += k
        now = time.monotonic()
        step = math.floor(self.done / self.total / LINE_FRACTION) if self.total else 0
        if self.total and self.done >= self.total:
            return  # the end line follows
        since = now - self.last_line
        if (step > self.last_step and since >= LINE_MIN_SECONDS) or since >= LINE_SECONDS:
            self.last_step, self.last_line = max(step, self.last_step), now
            log.info("%s: %s", self.description, self._state(now))

    def _state(self, now: float) -> str:
        elapsed = now - self.started
        done = f"{_count(self.done)}{'/' + _count(self.total) if self.total else ''} {self.unit}".strip()
        if not self.total:
            return f"{done}, {_duration(elapsed)}"
        fraction = min(1.0, self.done / self.total)
        left = f", ~{_duration(elapsed * (1 - fraction) / fraction)} left" if 0 < fraction < 1 else ""
        return f"{100 * fraction:.0f}% ({done}), {_duration(elapsed)}{left}"

    def close(self, ok: bool) -> None:
        elapsed = _duration(time.monotonic() - self.started)
        if ok:
            log.info("%s: done in %s", self.description, elapsed)
        else:
            log.info("%s: stopped after %s at %s", self.description, elapsed, self._state(time.monotonic()))


def _count(value: float | None) -> str:
    """``1,234`` for whole numbers, ``0.5`` otherwise."""
    if value is None:
        return "?"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


class _BarTask:
    """One row of the shared rich display; the display lives while any task is open."""

    _progress = None  # the shared rich.progress.Progress while tasks are open
    _open = 0

    def __init__(self, description: str, total: float | None, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        cls = type(self)
        if cls._progress is None:
            cls._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            cls._progress.start()
        cls._open += 1
        self.description = description
        self.started = time.monotonic()
        self.id = cls._progress.add_task(description, total=total if total and total > 0 else None)

    def advance(self, k: float = 1) -> None:
        assert self._progress is not None
        self._progress.advance(self.id, k)

    def close(self, ok: bool) -> None:
        cls = type(self)
        progress = cls._progress
        assert progress is not None
        progress.remove_task(self.id)
        status = "done" if ok else "stopped"
        elapsed = _duration(time.monotonic() - self.started)
        progress.console.print(f"{self.description}: {status} in {elapsed}", highlight=False, markup=False)
        cls._open -= 1
        if cls._open == 0:
            progress.stop()
            cls._progress = None
