"""Permutation sets: the vectorized greedy selection against a plain-loop reference, Hamming statistics
against brute force, determinism from the seed, and the on-disk cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.tasks import permutations as perm_module
from selfsup.tasks.permutations import hamming_stats, permutation_set, select_permutations


def hamming(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def greedy_reference(count: int, n: int, selection: str, first: int) -> list[tuple[int, ...]]:
    """The paper's Algorithm 1 written plainly: add the candidate with the best score, first on ties."""
    candidates = list(itertools.permutations(range(n)))
    chosen = [candidates[first]]
    while len(chosen) < count:
        best, best_score = None, -1.0
        for candidate in candidates:
            if candidate in chosen:
                continue
            distances = [hamming(candidate, c) for c in chosen]
            score = sum(distances) / len(distances) if selection == "max_avg" else min(distances)
            if score > best_score:
                best, best_score = candidate, score
        chosen.append(best)  # type: ignore[arg-type]
    return chosen


@pytest.mark.parametrize("selection", ["max_avg", "max_min"])
@pytest.mark.parametrize(("n", "count", "seed"), [(4, 10, 0), (4, 24, 3), (5, 30, 1), (5, 17, 7)])
def test_greedy_selection_matches_the_plain_loop(selection: str, n: int, count: int, seed: int) -> None:
    fast = select_permutations(count, n, selection, seed)
    first = tuple(int(v) for v in fast[0])
    first_index = list(itertools.permutations(range(n))).index(first)
    expected = greedy_reference(count, n, selection, first_index)
    assert [tuple(int(v) for v in row) for row in fast] == expected


def test_every_row_is_a_distinct_permutation() -> None:
    perms = select_permutations(200, 9, "max_avg", seed=0)
    assert perms.shape == (200, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(row) for row in perms.tolist()}) == 200


@pytest.mark.parametrize("size", [2, 5, 12])
def test_hamming_stats_match_brute_force(size: int) -> None:
    rng = np.random.default_rng(size)
    perms = np.stack([rng.permutation(6) for _ in range(size)])
    pairs = [hamming(tuple(perms[i]), tuple(perms[j])) for i in range(size) for j in range(i + 1, size)]
    stats = hamming_stats(perms)
    assert stats.min == min(pairs)
    assert stats.mean == pytest.approx(sum(pairs) / len(pairs))


def test_selected_sets_have_the_statistics_their_rule_promises() -> None:
    # Two random permutations agree in one position on average (mean distance n - 1) and some pairs
    # in many; max_min keeps every pair apart, max_avg pushes the mean up.
    max_min = hamming_stats(select_permutations(100, 9, "max_min", seed=0))
    max_avg = hamming_stats(select_permutations(100, 9, "max_avg", seed=0))
    random_perms = np.stack([np.random.default_rng(s).permutation(9) for s in range(100)])
    assert max_min.min > hamming_stats(random_perms).min
    assert max_avg.mean > hamming_stats(random_perms).mean


def test_same_seed_same_set_other_seed_other_set() -> None:
    a = select_permutations(100, 9, "max_avg", seed=0)
    assert np.array_equal(a, select_permutations(100, 9, "max_avg", seed=0))
    assert not np.array_equal(a, select_permutations(100, 9, "max_avg", seed=1))
    assert not np.array_equal(a, select_permutations(100, 9, "max_min", seed=0))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="selection must be one of"):
        select_permutations(10, 4, "mean")
    with pytest.raises(ValueError, match=r"between 1 and 4! = 24"):
        select_permutations(25, 4)
    with pytest.raises(ValueError, match="up to 10 items"):
        select_permutations(100, 16)


def test_cached_set_is_read_back_not_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = permutation_set(50, 9, "max_avg", seed=2, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and "seed2" in files[0].name

    def fail(*args: object) -> None:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(perm_module, "select_permutations", fail)
    second = permutation_set(50, 9, "max_avg", seed=2, cache_dir=tmp_path)
    assert second.dtype == torch.long and torch.equal(first, second)


def test_damaged_cache_is_regenerated(tmp_path: Path) -> None:
    expected = permutation_set(20, 5, "max_min", seed=0)
    path = tmp_path / "max_min_n5_count20_seed0.npy"
    path.write_bytes(b"not an array")
    assert torch.equal(permutation_set(20, 5, "max_min", seed=0, cache_dir=tmp_path), expected)
    np.save(path, np.zeros((20, 5), dtype=np.uint8))  # right shape, but not permutations
    assert torch.equal(permutation_set(20, 5, "max_min", seed=0, cache_dir=tmp_path), expected)
    assert np.array_equal(np.load(path), expected.numpy())


@pytest.mark.slow
def test_the_papers_thousand_of_nine_are_far_apart() -> None:
    # The paper's set size; how long it takes is measured by benchmarks, not asserted here.
    perms = select_permutations(1000, 9, "max_avg", seed=0)
    assert len({tuple(p.tolist()) for p in perms}) == 1000
    assert hamming_stats(perms).mean > 8.0
