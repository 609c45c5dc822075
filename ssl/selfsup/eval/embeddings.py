"""Embeddings for use outside selfsup, and their 2-D projections (t-SNE; UMAP when installed).

``save_embeddings`` writes one ``.npz`` file that numpy alone reads::

    data = np.load("embeddings.npz")
    data["features"]  # (N, D) float32
    data["labels"]    # (N,) int64, -1 when unlabeled
    data["paths"]     # (N,) where each image came from (file path or archive member)
    data["classes"]   # class names, indexed by label
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from selfsup import progress
from selfsup.atomic import atomic_write

PROJECTIONS = ("tsne", "umap")


def save_embeddings(
    path: str | os.PathLike[str],
    features: Tensor,
    labels: Tensor,
    paths: Sequence[str],
    classes: Sequence[str] | None,
) -> Path:
    """Write features (N, D), labels (N,), image paths and class names to one ``.npz`` (atomically)."""

    def write(tmp: Path) -> None:
        np.savez(
            tmp,  # ends with .npz, so savez does not append it to the temporary name
            features=features.float().numpy(),
            labels=labels.numpy().astype(np.int64),
            paths=np.asarray(list(paths), dtype=str),
            classes=np.asarray(list(classes or []), dtype=str),
        )

    return atomic_write(path, write, suffix=".npz")


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, chosen at random (all when n is small)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def project_2d(
    features: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0
) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates by t-SNE (scikit-learn) or UMAP (umap-learn).

    Features are L2-normalized first, so distances follow cosine similarity as in kNN.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {method!r}")
    x = features.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise ValueError(
                "projection 'umap' needs umap-learn: pip install umap-learn (or use 'tsne')"
            ) from e
        with progress.task(f"UMAP of {len(x):,} points", total=None):
            return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(x))
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))  # t-SNE needs perplexity < N
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    with progress.task(f"t-SNE of {len(x):,} points", total=None):
        return np.asarray(tsne.fit_transform(x))
