"""Permutation sets for Jigsaw puzzles, chosen for large Hamming distances (Noroozi & Favaro, ECCV 2016).

A Jigsaw network classifies which permutation of a fixed set shuffled the tiles, so the set decides
how hard and how useful the task is. The paper (Sec. 3.2, Algorithm 1) selects it greedily from all
``n!`` permutations: start from a random one, then repeatedly add the candidate whose *average*
Hamming distance to the permutations chosen so far is largest (``max_avg``; the paper's default, with
1000 permutations of 9 tiles). ``max_min`` adds the candidate whose *minimum* distance to the chosen
ones is largest instead, which keeps any two permutations far apart. Ties go to the first candidate in
lexicographic order, so a set depends on ``(n, count, selection, seed)`` only: every process of a
distributed run derives the same set from its config.

All 362,880 candidates for 9 tiles are scored at once per step (numpy on a (9, 9!) uint8 array),
so 1000 permutations take about a second.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.atomic import atomic_write

log = logging.getLogger(__name__)

SELECTIONS = ("max_avg", "max_min")
MAX_ITEMS = 10  # 10! candidates are 36 MB; 11! would be 440 MB, and 16 (a 4 x 4 grid) out of reach
_TAKEN = -(2**30)


@dataclass(frozen=True)
class HammingStats:
    """Hamming distances between the distinct pairs of a permutation set (positions that differ)."""

    min: int
    mean: float


def all_permutations(n: int) -> np.ndarray:
    """(n!, n) uint8: every permutation of ``range(n)``, in lexicographic order."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.uint8)


def select_permutations(count: int, n: int = 9, selection: str = "max_avg", seed: int = 0) -> np.ndarray:
    """Greedy selection of ``count`` permutations of ``n`` items with large Hamming distances.

    Args:
        count: size of the set, at most ``n!``.
        n: items per permutation (tiles per puzzle).
        selection: ``max_avg`` (largest average distance to the chosen set: the paper's Algorithm 1)
            or ``max_min`` (largest minimum distance).
        seed: picks the first permutation; everything after it is deterministic.

    Returns:
        (count, n) uint8, row ``k`` the ``k``-th permutation chosen.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if n > MAX_ITEMS:
        raise ValueError(
            f"the greedy selection scores all {n}! candidates; it supports up to {MAX_ITEMS} items "
            f"(a 3 x 3 grid), got {n}"
        )
    if not 1 <= count <= math.factorial(n):
        raise ValueError(f"count must be between 1 and {n}! = {math.factorial(n)}, got {count}")
    candidates = all_permutations(n).T.copy()  # (n, n!): each compare below runs over contiguous rows
    # Sum (max_avg) or minimum (max_min) of the distances from each candidate to the chosen set; a
    # chosen candidate gets a score so low that no later update can make it the best again.
    score = np.full(candidates.shape[1], 0 if selection == "max_avg" else n + 1, dtype=np.int32)
    chosen = [int(np.random.default_rng(seed).integers(candidates.shape[1]))]
    while len(chosen) < count:
        j = chosen[-1]
        score[j] = _TAKEN
        distance = (candidates != candidates[:, j : j + 1]).sum(axis=0, dtype=np.int32)
        if selection == "max_avg":
            score += distance
        else:
            np.minimum(score, distance, out=score)
        chosen.append(int(score.argmax()))
    return candidates[:, chosen].T.copy()


def hamming_stats(permutations: np.ndarray | Tensor) -> HammingStats:
    """Minimum and mean Hamming distance over all distinct pairs of a set.

    Args:
        permutations: (P, n) with P >= 2.
    """
    perms = np.asarray(permutations)
    if perms.shape[0] < 2:
        raise ValueError(f"Hamming statistics need at least two permutations, got {perms.shape[0]}")
    distance = np.zeros((perms.shape[0], perms.shape[0]), dtype=np.int64)
    for position in range(perms.shape[1]):  # n passes over (P, P) instead of one (P, P, n) array
        column = perms[:, position]
        distance += column[:, None] != column[None, :]
    pairs = distance[np.triu_indices(perms.shape[0], k=1)]
    return HammingStats(min=int(pairs.min()), mean=float(pairs.mean()))


def permutation_set(
    count: int,
    n: int = 9,
    selection: str = "max_avg",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tensor:
    """The set from :func:`select_permutations`, read from ``cache_dir`` when generated before.

    The file is named by every argument that changes the set, and written atomically, so concurrent
    processes (the ranks of one run, or several runs) never read a partial file.

    Returns:
        (count, n) long tensor; label ``k`` of the Jigsaw task means row ``k``.
    """
    path = Path(cache_dir) / f"{selection}_n{n}_count{count}_seed{seed}.npy" if cache_dir else None
    perms = _read(path, count, n) if path is not None and path.is_file() else None
    if perms is None:
        perms = select_permutations(count, n, selection, seed)
        if path is not None:
            atomic_write(path, lambda tmp: np.save(tmp, perms, allow_pickle=False), suffix=".npy")
    if count > 1:
        stats = hamming_stats(perms)
        log.info(
            "%d permutations of %d (%s, seed %d): Hamming distance min %d, mean %.2f",
            count, n, selection, seed, stats.min, stats.mean,
        )  # fmt: skip
    return torch.from_numpy(perms.astype(np.int64))


def _read(path: Path, count: int, n: int) -> np.ndarray | None:
    """A cached set, or None (regenerate) when the file is damaged or is not such a set."""
    try:
        perms = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable permutation cache %s (%s); regenerating", path, e)
        return None
    valid = perms.shape == (count, n) and bool((np.sort(perms, axis=1) == np.arange(n)).all())
    if not valid:
        log.warning("ignoring %s: not %d permutations of %d; regenerating", path, count, n)
        return None
    return perms.astype(np.uint8)
