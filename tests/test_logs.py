"""selfsup.logs: the listed third-party notices are filtered, ours and everyone else's are not."""

from __future__ import annotations

import logging
import warnings

import pytest

from selfsup import logs


def _caught(emit) -> list[warnings.WarningMessage]:
    """The warnings ``emit()`` lets through once the notices are silenced."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.silence_third_party_notices()
        emit()
    return caught


def _warn_from(module: str, message: str, category: type[Warning]) -> None:
    warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)


@pytest.mark.parametrize(
    ("module", "message", "category"),
    [
        (
            "pytorch_lightning.utilities._pytree",
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
            FutureWarning,
        ),
        (
            "torchvision.io.image",
            "The image decoding and encoding capabilities of TorchVision are deprecated from version 0.25",
            DeprecationWarning,
        ),
        (
            "pytorch_lightning.trainer.connectors.data_connector",
            "The 'train_dataloader' does not have many workers which may be a bottleneck.",
            UserWarning,
        ),
        (
            "torch.utils.data.dataloader",
            "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used.",
            UserWarning,
        ),
    ],
)
def test_listed_notice_is_filtered(module: str, message: str, category: type[Warning]) -> None:
    assert _caught(lambda: _warn_from(module, message, category)) == []


def test_real_lightning_pytree_notice_is_filtered() -> None:
    from pytorch_lightning.utilities._pytree import _tree_flatten

    assert [str(w.message) for w in _caught(lambda: _tree_flatten(1))] == []


def test_real_torchvision_decoding_notice_is_filtered() -> None:
    from torchvision.io import image

    if not hasattr(image, "_warn_deprecated"):
        pytest.skip("this torchvision has no decoding deprecation notice")
    assert _caught(image._warn_deprecated) == []


def test_our_warnings_and_the_same_text_elsewhere_stay() -> None:
    caught = _caught(
        lambda: (
            _warn_from(
                "selfsup.data.datamodule", "data.num_workers=0 decodes in the main process", UserWarning
            ),
            _warn_from("selfsup.stages.probe", "The 'train' does not have many workers", UserWarning),
            _warn_from("pytorch_lightning.trainer", "Some other Lightning warning", UserWarning),
        )
    )
    assert len(caught) == 3


def test_lightning_tip_is_dropped_and_other_records_stay(caplog: pytest.LogCaptureFixture) -> None:
    logs.silence_third_party_notices()
    logs.silence_third_party_notices()  # idempotent: one filter per logger
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert sum(isinstance(f, logs._DropMatching) for f in rank_zero.filters) == 1
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
        logging.getLogger("selfsup").info("💡 Tip: ours stays")
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: False, used: False",
        "💡 Tip: ours stays",
    ]
