"""Published numbers beside ours: a preset's ``published`` entries, matched to runs and rendered.

A paper-protocol experiment (conf/experiment/*.yaml) lists the numbers its paper reports::

    published:
      - source: Gidaris et al. 2018, Table 1
        when: {eval: rotnet_nonlinear, encoder.num_blocks: 4}
        numbers: {probe_block1: 85.07, probe_block2: 89.06, probe_block3: 86.21, probe_block4: 61.73}

``when`` selects the runs an entry applies to: a config group's name compares the group's choice
(``eval: rotnet_nonlinear``), a dotted key compares the composed value (``encoder.num_blocks: 4``).
``numbers`` maps the columns of the sweep summary (``probe_<layer>``, ``knn_top1_k20``,
``finetune_pretrained``; :func:`selfsup.reports.summary.headline_metrics`) to the paper's value, in %.
The run's report.md and the sweep's summary.md put each matching entry's numbers beside the run's own,
with the command-line overrides by which the run departs from the preset: a run on a tenth of the
data, or for five epochs instead of a hundred, says so beside the paper's number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from selfsup.errors import ConfigError
from selfsup.reports.report import markdown_table

KEY = "published"
# Overrides that do not change the protocol: where things are, and what is shown while it runs.
NOT_PROTOCOL = (
    "paths.", "hydra.", "data.path=", "experiment=", "resume=", "report.", "logger=",
    "callbacks.progress_bar=", "trainer.enable_progress_bar=", "trainer.enable_model_summary=",
)  # fmt: skip


@dataclass(frozen=True)
class Published:
    """One published result set.

    Attributes:
        source: the paper and table, e.g. ``Gidaris et al. 2018, Table 1``.
        when: group -> choice, or dotted config key -> value, that a run must have.
        numbers: summary column -> the published value (%).
        note: how the published number was measured, where it differs from ours (best test epoch).
    """

    source: str
    when: dict[str, Any]
    numbers: dict[str, float]
    note: str = ""

    def matches(self, cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, Any]) -> bool:
        """Whether a run with config ``cfg`` and group ``choices`` is one this entry describes."""
        for key, wanted in self.when.items():
            if key in choices:
                have = choices[key]
            else:
                try:
                    have = OmegaConf.select(_as_config(cfg), key)
                except Exception:  # an interpolation a saved config cannot resolve: not this run
                    return False
            if str(have) != str(wanted):
                return False
        return True


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def published_entries(cfg: DictConfig | Mapping[str, Any]) -> list[Published]:
    """The ``published`` entries of a composed config (none when it has no such key).

    Raises:
        ConfigError: an entry lacks ``source``, ``when`` or ``numbers``, or a number is not a number.
    """
    node = cfg.get(KEY) if isinstance(cfg, (DictConfig, Mapping)) else None
    if node is None:
        return []
    if not isinstance(node, (ListConfig, list)):
        raise ConfigError(
            KEY, f"must be a list of {{source, when, numbers}} entries, got {type(node).__name__}"
        )
    entries = []
    for i, entry in enumerate(node):
        where = f"{KEY}[{i}]"
        if not isinstance(entry, (DictConfig, Mapping)):
            raise ConfigError(where, "must be a mapping with source, when and numbers")
        unknown = sorted(set(entry) - {"source", "when", "numbers", "note"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "is not one of source, when, numbers, note")
        for field in ("source", "when", "numbers"):
            if entry.get(field) in (None, "", {}):
                raise ConfigError(f"{where}.{field}", "is required")
        when = entry["when"]
        numbers = entry["numbers"]
        if not isinstance(when, (DictConfig, Mapping)) or not isinstance(numbers, (DictConfig, Mapping)):
            raise ConfigError(where, "when and numbers must be mappings")
        for column, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.numbers.{column}", f"must be a number (%), got {value!r}")
        entries.append(
            Published(
                source=str(entry["source"]),
                when={str(k): v for k, v in when.items()},
                numbers={str(k): float(v) for k, v in numbers.items()},
                note=str(entry.get("note") or ""),
            )
        )
    return entries


def protocol_overrides(overrides: Sequence[str], selected_by: Sequence[str] = ()) -> list[str]:
    """The command-line overrides that change the preset's protocol.

    Paths, logging and progress display are left out, and so are the keys ``selected_by`` (an
    entry's ``when``): they choose which published numbers apply, they do not depart from them.
    """
    skip = (*NOT_PROTOCOL, *(f"{key}=" for key in selected_by))
    return [o for o in overrides if not o.lstrip("+~").startswith(skip)]


def comparison_rows(
    runs: Sequence[tuple[str, Mapping[str, Any], Sequence[str], Sequence[Published]]],
) -> tuple[list[str], list[list[Any]]] | None:
    """A table of ours beside the published numbers; None when no run matches an entry.

    Args:
        runs: per run, its label, its summary columns (``probe_block2`` -> our %), its command-line
            overrides, and the entries that match it.

    Returns:
        The header and rows: per run and matching entry, a row of ours (the final epoch), a row of
        the paper's, and a row of the differences; the columns are those the entries name.
    """
    matched = [(label, ours, overrides, e) for label, ours, overrides, entries in runs for e in entries]
    if not matched:
        return None
    columns = list(dict.fromkeys(c for *_, e in matched for c in e.numbers))
    header = ["run", "numbers", *columns, "departs from the preset by"]
    rows: list[list[Any]] = []
    for label, ours, overrides, entry in matched:
        departs = " ".join(protocol_overrides(overrides, list(entry.when))) or "nothing"
        own = [_number(ours.get(c)) if c in entry.numbers else "" for c in columns]
        paper = [entry.numbers.get(c, "") for c in columns]
        gap = [
            round(float(ours[c]) - entry.numbers[c], 2)
            if c in entry.numbers and isinstance(ours.get(c), (int, float))
            else ""
            for c in columns
        ]
        rows += [
            [label, "ours (final epoch)", *own, departs],
            [label, entry.source, *paper, ""],
            [label, "ours - published", *gap, ""],
        ]
    return header, rows


def _number(value: Any) -> Any:
    return round(float(value), 2) if isinstance(value, (int, float)) else "not measured"


def section(
    runs: Sequence[tuple[str, Mapping[str, Any], Sequence[str], Sequence[Published]]],
) -> list[str]:
    """The markdown section "Beside the published numbers" (no lines when nothing matches)."""
    table = comparison_rows(runs)
    if table is None:
        return []
    entries = [e for *_, matched in runs for e in matched]
    sources = dict.fromkeys(f"- {e.source}: {e.note}" if e.note else f"- {e.source}" for e in entries)
    return [
        "## Beside the published numbers",
        "",
        "Top-1 % on the test split. Ours are the final epoch's, never the best epoch on test; a run that",
        "departs from the preset (fewer epochs, a subset of the data) measures something else than the",
        "paper did, and its last column says how.",
        "",
        markdown_table(*table),
        "",
        *sources,
        "",
    ]
