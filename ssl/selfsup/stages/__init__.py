"""Stages are plain functions of the composed config (``pretrain(cfg) -> metrics``); cli.py wraps them."""

from selfsup.stages.pipeline import run
from selfsup.stages.pretrain import pretrain
from selfsup.stages.probe import probe

__all__ = ["pretrain", "probe", "run"]
