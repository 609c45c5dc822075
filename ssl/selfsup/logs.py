"""The one place where known third-party notices that a user can do nothing about are filtered.

Every entry point calls :func:`silence_third_party_notices` once, before any work starts. Each notice
is listed in :data:`WARNINGS` or :data:`LOG_RECORDS` with the reason it is noise, and matched on its
message and, where it is stable, its module, so that every other warning stays visible, ours included
(``selfsup.*`` warnings are never matched here).

To silence another notice, add it to one of the two lists with a comment saying why the user cannot
act on it; ``tests/test_logs.py`` checks that each listed notice is filtered and that ours are not.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

__all__ = ["LOG_RECORDS", "WARNINGS", "silence_third_party_notices"]


@dataclass(frozen=True)
class Notice:
    """A third-party warning: a regex on the start of its message, its category and module regex."""

    message: str
    category: type[Warning] = Warning
    module: str = ""
    why: str = ""


WARNINGS: tuple[Notice, ...] = (
    Notice(
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"(pytorch_lightning|lightning)(\.|$)",
        "Lightning's own use of a torch API deprecated by torch; fixed by a Lightning release",
    ),
    Notice(
        r"The image decoding and encoding capabilities of TorchVision are deprecated",
        DeprecationWarning,
        r"torchvision(\.|$)",
        "torchvision announces its decoders move to torchcodec; selfsup.data.decode still uses them and works",
    ),
    Notice(
        r"The '\w+' does not have many workers",
        Warning,
        r"(pytorch_lightning|lightning)(\.|$)",
        "data.num_workers is chosen deliberately (auto: the machine's cores; 0 where measured best)",
    ),
    Notice(
        r"'pin_memory' argument is set as true but no accelerator is found",
        UserWarning,
        r"torch(\.|$)",
        "data.pin_memory is documented as ignored without a GPU; the same config runs on both",
    ),
)
"""Warnings filtered with ``warnings.filterwarnings("ignore", ...)``."""

LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # Lightning advertises its cloud products ("💡 Tip: For seamless cloud logging ... litlogger").
    ("pytorch_lightning.utilities.rank_zero", r"💡 Tip:"),
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip:"),
    ("lightning_fabric.utilities.rank_zero", r"💡 Tip:"),
    ("lightning.fabric.utilities.rank_zero", r"💡 Tip:"),
)
"""Log records dropped: (logger name, regex on the start of the message)."""


class _DropMatching(logging.Filter):
    """Drops the records whose message starts with a match of ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return self.pattern.match(message) is None


def silence_third_party_notices() -> None:
    """Filters the notices listed in :data:`WARNINGS` and :data:`LOG_RECORDS`; safe to call repeatedly.

    Warning filters are process-wide and inherited by forked DataLoader workers; log filters sit on the
    named loggers, where the notices are logged, so records of other loggers are never touched.
    """
    for notice in WARNINGS:
        warnings.filterwarnings(
            "ignore", message=notice.message, category=notice.category, module=notice.module
        )
    for name, pattern in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
