"""Command-line entry points: thin Hydra wrappers around the stage functions.

Configs are found as ``pkg://selfsup.conf``, the repo's conf/ folder installed as a package, so the
commands work the same from an editable install, a wheel, and any working directory (hydra #2125).
Errors meant for the user (:class:`~selfsup.errors.SelfsupError`) print one clear ``error: ...`` line
and exit with status 2 instead of a stack trace. Ctrl-C prints one ``interrupted: ...`` line (during
pretraining: where the checkpoint is and how to resume) and exits with 130, the shell's code for
SIGINT, so scripts and schedulers can tell "stopped by the user" from "wrong input" (2).

In a ``-m`` sweep every job is checked before the first one trains (:mod:`selfsup.stages.sweep`), and
a job that fails later (any exception) records its error in its own metrics.json instead of ending
the sweep; the sweep's summary lists it, and the sweep exits with 2 at its end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from selfsup.errors import SelfsupError

CONFIG_PATH = "pkg://selfsup.conf"
log = logging.getLogger("selfsup")


def _entry(config_name: str, stage: Callable[[DictConfig], Any]) -> Callable[[], None]:
    def task_function(cfg: DictConfig) -> None:
        from selfsup.stages.sweep import in_multirun, record_failure

        try:
            stage(cfg)
        except KeyboardInterrupt:  # Ctrl-C outside training (setup, evaluation): nothing half-written
            _stop(cfg, "interrupted", "stopped by Ctrl-C", 130)
        except Exception as e:
            prefix = getattr(e, "prefix", "error")
            if isinstance(e, SelfsupError) and prefix == "interrupted":
                _stop(cfg, prefix, str(e), getattr(e, "exit_code", 130))
            if not in_multirun():
                if not isinstance(e, SelfsupError):
                    raise
                log.error("%s", e)
                print(f"{prefix}: {e}", file=sys.stderr)
                sys.exit(getattr(e, "exit_code", 2))
            # One failed job never sinks a sweep: its error goes to its metrics.json (and the
            # summary), and Hydra launches the next job.
            record_failure(cfg, e)
            log.error("this job failed, the sweep goes on: %s: %s", type(e).__name__, e, exc_info=e)
            print(f"error: job failed, the sweep goes on: {type(e).__name__}: {e}", file=sys.stderr)

    def main() -> None:
        from selfsup.logs import silence_third_party_notices

        silence_third_party_notices()  # once, before Hydra, Lightning or torchvision speak
        hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base="1.3")(task_function)()

    main.__doc__ = f"Run the '{config_name}' config ({stage.__module__}.{stage.__name__})."
    return main


def _stop(cfg: DictConfig, prefix: str, message: str, code: int) -> None:
    """Ctrl-C (or SIGTERM): print one line and exit; in a sweep, record it and rewrite the summary first."""
    from selfsup.stages.sweep import in_multirun, record_failure, write_summary

    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        record_failure(cfg, KeyboardInterrupt(message))
        write_summary(HydraConfig.get().sweep.dir)
    log.warning("%s", message)
    print(f"{prefix}: {message}", file=sys.stderr)
    sys.exit(code)


def _run(cfg: DictConfig) -> Any:
    from selfsup.stages.pipeline import run

    return run(cfg)


def _pretrain(cfg: DictConfig) -> Any:
    from selfsup.stages.pretrain import pretrain as stage

    return stage(cfg)


def _probe(cfg: DictConfig) -> Any:
    """``selfsup-probe``, then its result tables and output folder on the console."""
    from rich.console import Console

    from selfsup.run_dir import RunDir
    from selfsup.stages.pipeline import print_summary
    from selfsup.stages.probe import probe as stage

    started = time.perf_counter()
    sections = stage(cfg)
    print_summary(sections, RunDir.from_config(cfg).root, time.perf_counter() - started, Console())
    return sections


def _embed(cfg: DictConfig) -> Any:
    from selfsup.stages.embed import embed

    return embed(cfg)


def _finetune(cfg: DictConfig) -> Any:
    from selfsup.stages.finetune import finetune

    return finetune(cfg)


def _shard(cfg: DictConfig) -> Any:
    from selfsup.data.shards import shard_command

    return shard_command(cfg)


main = _entry("pipeline", _run)  # `selfsup`: pretrain, then evaluate pretrained vs random init
pretrain = _entry("pretrain", _pretrain)  # `selfsup-pretrain`
probe = _entry("probe", _probe)  # `selfsup-probe +encoders.mine=<export folder>`
finetune = _entry("finetune", _finetune)  # `selfsup-finetune +encoders.mine=<export folder>`
embed = _entry("embed", _embed)  # `selfsup-embed encoder_path=<export folder>`
shard = _entry("shard", _shard)  # `selfsup-shard data=folder data.path=<images> shard.out=<shard folder>`
