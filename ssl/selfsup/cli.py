"""Command-line entry points: thin Hydra wrappers around the stage functions.

Configs are found as ``pkg://selfsup.conf``, the repo's conf/ folder installed as a package, so the
commands work the same from an editable install, a wheel, and any working directory (hydra #2125).
Errors meant for the user (:class:`~selfsup.errors.SelfsupError`) print one clear ``error: ...`` line
and exit with status 2 instead of a stack trace. Ctrl-C prints one ``interrupted: ...`` line (during
pretraining: where the checkpoint is and how to resume) and exits with 130, the shell's code for
SIGINT, so scripts and schedulers can tell "stopped by the user" from "wrong input" (2).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from selfsup.errors import SelfsupError

CONFIG_PATH = "pkg://selfsup.conf"
log = logging.getLogger("selfsup")


def _entry(config_name: str, stage: Callable[[DictConfig], Any]) -> Callable[[], None]:
    def task_function(cfg: DictConfig) -> None:
        try:
            stage(cfg)
        except SelfsupError as e:
            prefix = getattr(e, "prefix", "error")
            (log.warning if prefix == "interrupted" else log.error)("%s", e)
            print(f"{prefix}: {e}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 2))
        except KeyboardInterrupt:  # Ctrl-C outside training (setup, evaluation): nothing half-written
            print("interrupted: stopped by Ctrl-C", file=sys.stderr)
            sys.exit(130)

    def main() -> None:
        hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(task_function)()

    main.__doc__ = f"Run the '{config_name}' config ({stage.__module__}.{stage.__name__})."
    return main


def _run(cfg: DictConfig) -> Any:
    from selfsup.stages.pipeline import run

    return run(cfg)


def _pretrain(cfg: DictConfig) -> Any:
    from selfsup.stages.pretrain import pretrain as stage

    return stage(cfg)


def _probe(cfg: DictConfig) -> Any:
    from selfsup.stages.probe import probe as stage

    return stage(cfg)


def _embed(cfg: DictConfig) -> Any:
    from selfsup.stages.embed import embed

    return embed(cfg)


def _finetune(cfg: DictConfig) -> Any:
    from selfsup.stages.finetune import finetune

    return finetune(cfg)


main = _entry("pipeline", _run)  # `selfsup`: pretrain, then evaluate pretrained vs random init
pretrain = _entry("pretrain", _pretrain)  # `selfsup-pretrain`
probe = _entry("probe", _probe)  # `selfsup-probe +encoders.mine=<export folder>`
finetune = _entry("finetune", _finetune)  # `selfsup-finetune +encoders.mine=<export folder>`
embed = _entry("embed", _embed)  # `selfsup-embed encoder_path=<export folder>`
