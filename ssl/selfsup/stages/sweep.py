"""A ``-m`` sweep that is checked before it trains, survives a failed job, and always leaves a summary.

:class:`SweepCallback` (a Hydra callback, conf/hydra/default.yaml) does three things:

- ``on_multirun_start``: every job's config is composed and checked with the checks its stage runs
  before training (:data:`STAGE_CHECKS`), so a job that would be refused stops the sweep with one
  ``error: job #N (overrides): ...`` line and exit status 2 before the first job trains.
- ``on_job_end``: the sweep summary (summary.md) is rewritten after every job, so a sweep cut short
  (Ctrl-C, a killed node) still has one over the jobs that ended.
- ``on_multirun_end``: the final summary; if some jobs failed, one ``error:`` line counts them and
  the sweep exits with status 2.

A job that fails during a sweep does not end it: the command line's task function
(:mod:`selfsup.cli`) calls :func:`record_failure`, which writes an ``error`` section into the job's
metrics.json, and returns, so Hydra launches the next job.

Why a callback: the task function only ever sees its own job, and Hydra's sweeper composes a job's
config only when it launches it. ``on_multirun_start`` runs before the sweeper launches anything, with
the sweep's config; splitting the sweep overrides with the sweeper's own function
(``BasicSweeper.split_arguments``) and composing each job with the config loader's
``load_sweep_config`` (what the launcher calls) checks exactly the configs the jobs will get.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from selfsup.errors import SelfsupError
from selfsup.run_dir import RunDir

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
ERROR_SECTION = "error"
TRACEBACK_LINES = 8  # the last lines of a failed job's traceback kept in its metrics.json


def check_pretraining(cfg: DictConfig) -> None:
    """What :func:`selfsup.stages.pretrain.pretrain` checks before it trains (the same function)."""
    from selfsup.stages.components import build_pretraining

    build_pretraining(cfg)


def check_pipeline(cfg: DictConfig) -> None:
    """What :func:`selfsup.stages.pipeline.run` checks before pretraining, then the pretraining checks."""
    from selfsup.stages.pipeline import check_evaluation

    check_evaluation(cfg)
    check_pretraining(cfg)


# The up-front check of each command's config (hydra.job.config_name); other commands are composed only.
def check_probe(cfg: DictConfig) -> None:
    from selfsup.stages.probe import check_probe

    check_probe(cfg)


def check_finetune(cfg: DictConfig) -> None:
    from selfsup.stages.finetune import check_finetune

    check_finetune(cfg)


def check_embed(cfg: DictConfig) -> None:
    from selfsup.stages.embed import check_embed

    check_embed(cfg)


STAGE_CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "pipeline": check_pipeline,
    "pretrain": check_pretraining,
    "probe": check_probe,
    "finetune": check_finetune,
    "embed": check_embed,
}


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The overrides of every job of the sweep, in launch order, as the basic sweeper splits them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    loader = GlobalHydra.instance().config_loader()
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_config(config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """Job ``num``'s composed config (``hydra`` node included), as the launcher will compose it."""
    loader = GlobalHydra.instance().config_loader()
    job = loader.load_sweep_config(config, overrides)
    with open_dict(job):
        job.hydra.job.id = num
        job.hydra.job.num = num
    return job


def check_jobs(config: DictConfig) -> None:
    """Compose and check every job of the sweep; the first refusal names its job.

    Raises:
        SelfsupError: a job's config is refused; the message starts with ``job #N (overrides)``.
    """
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        log.info("sweeper %s: jobs are checked when they start", config.hydra.sweeper.get("_target_"))
        return
    check = STAGE_CHECKS.get(str(config.hydra.job.config_name))
    jobs = job_overrides(config)
    shared = (
        set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    )  # name jobs by the rest
    saved = HydraConfig.instance().cfg
    try:
        for num, overrides in enumerate(jobs):
            job = job_config(config, overrides, num)
            HydraConfig.instance().set_config(job)  # ${hydra:...} resolves as inside the job
            with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
                subdir = OmegaConf.select(job, "hydra.sweep.subdir")
                job.hydra.runtime.output_dir = os.path.abspath(os.path.join(job.hydra.sweep.dir, subdir))
            HydraConfig.instance().set_config(job)
            task_cfg = copy.deepcopy(job)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            try:
                if check is not None:
                    check(task_cfg)
            except SelfsupError as e:
                swept = " ".join(o for o in overrides if o not in shared) or "no swept settings"
                raise SelfsupError(f"job #{num} ({swept}): {e}") from None
    finally:
        HydraConfig.instance().cfg = saved
    log.info("checked the configs of all %d jobs of the sweep", len(jobs))


def in_multirun() -> bool:
    """Whether this process runs a job of a ``-m`` sweep."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def error_record(error: BaseException) -> dict[str, Any]:
    """A failed job's ``error`` section: the exception's type, message and last traceback lines."""
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
    return {"type": type(error).__name__, "message": str(error), "traceback": lines[-TRACEBACK_LINES:]}


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Write the ``error`` section of this job's metrics.json (first process only)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    try:
        RunDir.from_config(cfg).update_metrics(ERROR_SECTION, error_record(error))
    except Exception as e:  # the job's own error is what matters; say why it was not kept
        log.error("could not record the job's error in its metrics.json: %s", e)


def write_summary(sweep_dir: str) -> Any:
    """(Re)write the sweep's summary.md; a failure is logged, never raised (it must not stop a sweep)."""
    from selfsup.reports.summary import summarize

    try:
        return summarize(sweep_dir)
    except Exception as e:  # a summary must never stop a sweep
        log.error("could not write the sweep summary: %s", e)
        return None


class SweepCallback(Callback):
    """Hydra callback of every ``-m`` sweep (conf/hydra/default.yaml); see the module docstring."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_jobs(config)
        except SelfsupError as e:  # SystemExit passes Hydra's callback guard (it catches Exception)
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        # Hydra calls on_job_end for a single run too: there is no sweep to summarize then.
        if config.hydra.get("mode") == RunMode.MULTIRUN:
            write_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from selfsup.reports.summary import failed_runs

        write_summary(config.hydra.sweep.dir)
        failed = failed_runs(config.hydra.sweep.dir)
        if failed:
            names = ", ".join(failed)
            print(
                f"error: {len(failed)} job(s) of the sweep failed ({names}); their errors are in "
                f"{os.path.join(config.hydra.sweep.dir, 'summary.md')} and each job's metrics.json",
                file=sys.stderr,
            )
            sys.exit(2)
