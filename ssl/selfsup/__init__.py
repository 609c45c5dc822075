"""selfsup: self-supervised pretraining for images.

Pretext tasks (``selfsup.tasks``) pretrain encoders (``selfsup.encoders``) on unlabeled images
(``selfsup.data``); downstream stages (``selfsup.eval``) measure how good the representation is.
The Hydra configs that wire them together ship inside the package as ``selfsup.conf``.
"""

__version__ = "0.1.0"
