"""Published numbers beside ours: a preset's ``published`` entries, matched to runs and rendered.

A paper-protocol experiment (conf/experiment/*.yaml) lists the numbers its paper reports::

    published:
      - source: Gidaris et al. 2018, Table 1
        preset: rotnet_nin_paper
        when: {eval: rotnet_nonlinear, encoder.num_blocks: 4}
        numbers: {probe_block1: 85.07, probe_block2: 89.06, probe_block3: 86.21, probe_block4: 61.73}

``when`` selects the runs an entry applies to: a config group's name compares the group's choice
(``eval: rotnet_nonlinear``), a dotted key compares the composed value (``encoder.num_blocks: 4``).
``numbers`` maps the columns of the sweep summary (``probe_<layer>``, ``knn_top1_k20``,
``finetune_pretrained``; :func:`selfsup.reports.summary.headline_metrics`) to the paper's value, in %.
``preset`` names the experiment whose protocol the numbers belong to: another preset that inherits
the list (``rotnet_nin_official``, 200 epochs) is a departure, and said so.

The run's report.md and the sweep's summary.md put each matching entry's numbers beside the run's own,
with the command-line overrides by which the run departs from the preset: a run on a tenth of the
data, or for five epochs instead of a hundred, says so beside the paper's number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import ConfigError
from selfsup.reports.report import markdown_table

KEY = "published"
FIELDS = ("source", "preset", "when", "numbers", "note")
# The summary columns a published number can stand beside (selfsup.reports.summary.headline_metrics).
COLUMN_PREFIXES = ("probe_", "gain_", "knn_top1_k", "knn_val_top1_k", "finetune_", "pretext_acc")
# Overrides that do not change the protocol: where things are, which hardware runs it, what is shown
# while it runs, and which layers are probed (each probed layer has its own head: probing more
# layers at once changes no layer's number).
NOT_PROTOCOL = (
    "paths.", "hydra.", "hydra/", "data.path=", "data.num_workers=", "experiment=", "resume=",
    "report.", "logger=", "published=", "callbacks.progress_bar=", "trainer.enable_progress_bar=",
    "trainer.enable_model_summary=", "trainer.accelerator=", "trainer.devices=", "trainer.num_nodes=",
    "eval.linear_probe.layers=",
)  # fmt: skip


@dataclass(frozen=True)
class Published:
    """One published result set.

    Attributes:
        source: the paper and table, e.g. ``Gidaris et al. 2018, Table 1``.
        when: group -> choice, or dotted config key -> value, that a run must have.
        numbers: summary column -> the published value (%).
        preset: the experiment (``conf/experiment/<preset>.yaml``) whose protocol the numbers are
            of; None: whichever experiment lists them.
        note: how the published number was measured, where it differs from ours (best test epoch).
    """

    source: str
    when: dict[str, Any]
    numbers: dict[str, float]
    preset: str | None = None
    note: str = ""

    def matches(self, cfg: DictConfig, choices: Mapping[str, Any]) -> bool:
        """Whether a run with config ``cfg`` and group ``choices`` is one this entry describes."""
        for key, wanted in self.when.items():
            if key in choices:
                have = choices[key]
            else:
                try:
                    have = OmegaConf.select(cfg, key)
                except OmegaConfBaseException:  # e.g. ${hydra:...} in a saved config: not comparable
                    return False
            if not same_value(have, wanted):
                return False
        return True


@dataclass(frozen=True)
class PublishedRun:
    """What the comparison needs of one run.

    Attributes:
        label: the run's name in the table (``encoder.num_blocks=3``, ``this run``).
        columns: its summary columns (``probe_block2`` -> our %).
        overrides: its command-line overrides.
        choices: its config group choices (``experiment`` -> ``rotnet_nin_official``).
        entries: the published entries that match it.
    """

    label: str
    columns: Mapping[str, Any]
    overrides: Sequence[str]
    choices: Mapping[str, Any] = field(default_factory=dict)
    entries: Sequence[Published] = ()

    def departures(self, entry: Published) -> list[str]:
        """How this run departs from ``entry``'s protocol: another preset, then its overrides."""
        experiment = self.choices.get("experiment")
        other = [f"experiment={experiment}"] if entry.preset and experiment != entry.preset else []
        return [*other, *protocol_overrides(self.overrides, list(entry.when))]


def same_value(have: Any, wanted: Any) -> bool:
    """Config values compared as a user means them: 4 == 4.0, "rotnet_conv" == "rotnet_conv"."""
    numeric = (int, float)
    if isinstance(have, numeric) and isinstance(wanted, numeric):
        return not isinstance(have, bool) and not isinstance(wanted, bool) and float(have) == float(wanted)
    if isinstance(have, numeric) != isinstance(wanted, numeric):
        return False
    return bool(have == wanted) if have is not None else wanted is None


def published_entries(cfg: DictConfig) -> list[Published]:
    """The ``published`` entries of a composed config (none when it has no such key).

    Raises:
        ConfigError: an entry lacks ``source``, ``when`` or ``numbers``, has an unknown field, names
            a column no summary has, or gives something other than a number.
    """
    node = cfg.get(KEY)
    if node is None:
        return []
    if not isinstance(node, (ListConfig, list)):
        raise ConfigError(
            KEY, f"must be a list of {{source, when, numbers}} entries, got {type(node).__name__}"
        )
    return [_entry(entry, f"{KEY}[{i}]") for i, entry in enumerate(node)]


def matching(cfg: DictConfig, choices: Mapping[str, Any]) -> list[Published]:
    """The entries of ``cfg``'s ``published`` list that describe a run of ``cfg`` with group ``choices``."""
    return [e for e in published_entries(cfg) if e.matches(cfg, choices)]


def _entry(entry: Any, where: str) -> Published:
    """One entry of the list, checked; ``where`` is its key for error messages (``published[0]``)."""
    if not isinstance(entry, (DictConfig, Mapping)):
        raise ConfigError(where, f"must be a mapping with {', '.join(FIELDS)}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"is not one of {', '.join(FIELDS)}")
    for name in ("source", "when", "numbers"):
        if entry.get(name) in (None, "", {}):
            raise ConfigError(f"{where}.{name}", "is required")
    when, numbers = entry["when"], entry["numbers"]
    if not isinstance(when, (DictConfig, Mapping)) or not isinstance(numbers, (DictConfig, Mapping)):
        raise ConfigError(where, "when and numbers must be mappings")
    for column, value in numbers.items():
        if not str(column).startswith(COLUMN_PREFIXES):
            raise ConfigError(
                f"{where}.numbers.{column}",
                f"is no summary column: they start with {', '.join(COLUMN_PREFIXES)} (probe_block2)",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.numbers.{column}", f"must be a number (%), got {value!r}")
    return Published(
        source=str(entry["source"]),
        when={str(k): v for k, v in when.items()},
        numbers={str(k): float(v) for k, v in numbers.items()},
        preset=str(entry["preset"]) if entry.get("preset") else None,
        note=str(entry.get("note") or ""),
    )


def check_published(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """The ``published`` list is well formed and each ``when`` key is a config group or key.

    A misspelled key would never match and the paper's numbers would silently not be shown.
    """
    for i, entry in enumerate(published_entries(cfg)):
        for key in entry.when:
            if key in choices:
                continue
            try:
                found = OmegaConf.select(cfg, key, default=KeyError) is not KeyError
            except OmegaConfBaseException:
                found = True  # it exists; its value is resolved when the run is compared
            if not found:
                raise ConfigError(f"{KEY}[{i}].when.{key}", "is neither a config group nor a config key")


def protocol_overrides(overrides: Sequence[str], selected_by: Sequence[str] = ()) -> list[str]:
    """The command-line overrides that change the preset's protocol.

    Paths, hardware, logging and progress display are left out (:data:`NOT_PROTOCOL`), and so are
    the keys ``selected_by`` (an entry's ``when``): they choose which published numbers apply, they
    do not depart from them. ``trainer=gpu`` stays: its bf16 precision is not the papers' float32.
    """
    skip = (*NOT_PROTOCOL, *(f"{key}=" for key in selected_by))
    return [o for o in overrides if not o.lstrip("+~").startswith(skip)]


def comparison_rows(runs: Sequence[PublishedRun]) -> tuple[list[str], list[list[Any]]] | None:
    """A table of ours beside the published numbers; None when no run matches an entry.

    Per run and matching entry: a row of ours (the final epoch), a row of the paper's, a row of the
    differences; the columns are those the entries name, then how the run departs from the preset.
    """
    matched = [(run, entry) for run in runs for entry in run.entries]
    if not matched:
        return None
    columns = list(dict.fromkeys(c for _, e in matched for c in e.numbers))
    header = ["run", "numbers", *columns, "departs from the preset by"]
    rows: list[list[Any]] = []
    for run, entry in matched:
        ours = run.columns
        own = [_number(ours.get(c)) if c in entry.numbers else "" for c in columns]
        paper = [f"{entry.numbers[c]:.2f}" if c in entry.numbers else "" for c in columns]
        gap = [
            f"{float(ours[c]) - entry.numbers[c]:+.2f}"
            if c in entry.numbers and isinstance(ours.get(c), (int, float))
            else ""
            for c in columns
        ]
        rows += [
            [run.label, "ours (final epoch)", *own, " ".join(run.departures(entry)) or "nothing"],
            [run.label, entry.source, *paper, ""],
            [run.label, "ours - published", *gap, ""],
        ]
    return header, rows


def _number(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, (int, float)) else "not measured"


def section(runs: Sequence[PublishedRun]) -> list[str]:
    """The markdown section "Beside the published numbers" (no lines when nothing matches)."""
    table = comparison_rows(runs)
    if table is None:
        return []
    by_note: dict[str, list[str]] = {}
    for entry in (e for run in runs for e in run.entries):
        named = by_note.setdefault(entry.note, [])
        if entry.source not in named:
            named.append(entry.source)
    sources = [f"- {'; '.join(names)}" + (f": {note}" if note else "") for note, names in by_note.items()]
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
