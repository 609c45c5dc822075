"""Python defaults and the shipped yamls cannot drift apart: the yaml owns every configured value.

The rule (issue 10): a parameter of a ``selfsup.*`` callable that a shipped group yaml sets (any
``_target_`` node in conf/, nested ones included; experiments are overrides and do not count) may
keep a Python default only if that default equals the value in every such yaml. Otherwise it has no
default, so that ``RotNet(encoder)`` trains what ``task=rotnet`` trains. A yaml value that is an
interpolation (``${data.image_size}``) or mandatory (``???``) equals no Python default.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONF

YAMLS = sorted(p for p in CONF.rglob("*.yaml") if "experiment" not in p.relative_to(CONF).parts)


def load_yaml(path: Path) -> dict[str, Any]:
    """A yaml with the configs its ``defaults`` list names in its own folder merged in, as Hydra would.

    Entries naming another group (``- task: rotnet``) are left out: their files are checked on their
    own; so are configs from elsewhere (Hydra's plugins).
    """
    doc = yaml.safe_load(path.read_text()) or {}
    entries = doc.pop("defaults", None) or ["_self_"]
    if "_self_" not in entries:
        entries = [*entries, "_self_"]
    merged: dict[str, Any] = {}
    for entry in entries:
        if entry == "_self_":
            merged = _merge(merged, doc)
        elif isinstance(entry, str) and (path.parent / f"{entry.split('@')[0]}.yaml").is_file():
            merged = _merge(merged, load_yaml(path.parent / f"{entry.split('@')[0]}.yaml"))
    return merged


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def selfsup_targets(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, node) of every mapping with a ``selfsup.*`` ``_target_`` inside ``node``."""
    if isinstance(node, dict):
        if str(node.get("_target_", "")).startswith("selfsup."):
            yield where, node
        for key, value in node.items():
            yield from selfsup_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from selfsup_targets(value, f"{where}[{i}]")


def resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # a class attribute path such as pkg.module.Class.method
        parent, _, owner = module.rpartition(".")
        return getattr(getattr(importlib.import_module(parent), owner), name)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _is_literal(value: Any) -> bool:
    """False for values Hydra fills in: interpolations and ``???``."""
    if isinstance(value, str):
        return "${" not in value and value != "???"
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_is_literal(v) for v in value.values())
    return True


def disagreements(node: dict[str, Any], fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """(key, yaml value, Python default) for every key of ``node`` whose Python default differs.

    A key that is not a parameter of ``fn`` (and ``fn`` takes no ``**kwargs``) is reported with the
    default ``<no such parameter>``.
    """
    params = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    found: list[tuple[str, Any, Any]] = []
    for key, value in node.items():
        if key.startswith("_"):
            continue
        param = params.get(key)
        if param is None:
            if not takes_kwargs:
                found.append((key, value, "<no such parameter>"))
            continue
        if param.default is inspect.Parameter.empty:
            continue
        if not _is_literal(value) or _plain(value) != _plain(param.default):
            found.append((key, value, param.default))
    return found


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONF)))
def test_python_defaults_equal_the_yaml(path: Path) -> None:
    problems = [
        f"{path.relative_to(CONF)}: {where + '.' if where else ''}{key} = {value!r} in the yaml, but {node['_target_']} "
        f"defaults to {default!r} (remove the Python default or make it equal)"
        for where, node in selfsup_targets(load_yaml(path))
        for key, value, default in disagreements(node, resolve(node["_target_"]))
    ]
    assert not problems, "Python and yaml defaults disagree:\n" + "\n".join(problems)


def test_a_drifted_default_is_reported() -> None:
    def make(encoder: object, rotations: str = "all", width: int = 4, size: int = 8) -> None: ...

    node = {"_target_": "x.make", "rotations": "random", "width": 4, "size": "${data.image_size}", "typo": 1}
    assert disagreements(node, make) == [
        ("rotations", "random", "all"),
        ("size", "${data.image_size}", 8),
        ("typo", 1, "<no such parameter>"),
    ]


def test_the_walk_finds_nested_targets_and_merges_the_data_base() -> None:
    targets = dict(selfsup_targets(load_yaml(CONF / "eval" / "finetune.yaml")))
    assert targets["finetune.schedule"]["_target_"] == "selfsup.training.schedules.warmup_cosine"
    data = load_yaml(CONF / "data" / "cifar10.yaml")
    assert data["_target_"] == "selfsup.data.ImageDataModule" and data["hflip"] is True
    assert data["num_workers"] == 2, "the option's own value wins over the base's"


# Library functions that an eval section feeds key by key (the stages pass each value on by name).
# Keys of the section that are not parameters (layers, mode, seeds, ...) are the stage's own.
EVAL_SECTIONS = {
    "linear_probe": "selfsup.eval.linear_probe.fit_linear_probes",
    "knn": "selfsup.eval.knn.knn_accuracy",
    "finetune": "selfsup.eval.finetune.FineTuner",
}
EVAL_YAMLS = sorted((CONF / "eval").glob("*.yaml"))


def _is_preset(path: Path) -> bool:
    """An eval option whose defaults list starts from another one (eval=rotnet_nonlinear from linear):
    its values are a protocol's choices over the base, which owns the defaults checked here."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    return any(isinstance(e, str) and (path.parent / f"{e}.yaml").is_file() for e in entries)


BASE_EVAL_YAMLS = [path for path in EVAL_YAMLS if not _is_preset(path)]


def test_the_base_eval_options_are_the_ones_that_define_sections() -> None:
    assert [p.stem for p in BASE_EVAL_YAMLS] == ["finetune", "knn", "linear"]


@pytest.mark.parametrize("path", BASE_EVAL_YAMLS, ids=lambda p: p.name)
def test_eval_function_defaults_equal_every_base_eval_yaml(path: Path) -> None:
    doc = load_yaml(path)
    problems = [
        f"eval/{path.name}: {section}.{key} = {value!r}, but {target} defaults to {default!r}"
        for section, target in EVAL_SECTIONS.items()
        if isinstance(doc.get(section), dict)
        for key, value, default in disagreements(doc[section], resolve(target))
        # device: the stage resolves the yaml's `auto` to a torch device before passing it on.
        if default != "<no such parameter>" and key != "device"
    ]
    assert not problems, "Python and yaml defaults disagree:\n" + "\n".join(problems)
