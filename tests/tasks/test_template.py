"""tasks/template.py.txt, the task a contributor copies, is a working task that follows the contract."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import selfsup.tasks
from selfsup.encoders import ResNetEncoder
from selfsup.tasks.base import PretextTask

TEMPLATE = Path(selfsup.tasks.__file__).parent / "template.py.txt"


def test_the_template_is_a_working_task() -> None:
    spec = importlib.util.spec_from_loader("template_task", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(TEMPLATE.read_text(), str(TEMPLATE), "exec"), module.__dict__)
    task = module.MyTask(ResNetEncoder(18, cifar_stem=True))
    assert isinstance(task, PretextTask)
    assert task.heads() == [task.head], "the head is a child module"
    task.check_input(32)
    keys = torch.arange(6)
    first, again = (
        task.pretext_step(torch.randn(6, 3, 32, 32), keys),
        task.pretext_step(torch.randn(6, 3, 32, 32), keys),
    )
    assert first.loss.ndim == 0 and set(first.metrics) == {"my_acc"}
    assert torch.isfinite(first.loss) and torch.isfinite(again.loss)
