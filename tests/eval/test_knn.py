"""kNN: equals a brute-force implementation, chunking changes nothing, DDP gathers every rank."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selfsup.eval.knn import gather_across_ranks, knn_accuracy, knn_classify, top_k_neighbours


def brute_force_knn(
    train: torch.Tensor,
    labels: torch.Tensor,
    test: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> torch.Tensor:
    """A direct, loop-based reference: for each test vector, sort all similarities and vote."""
    predictions = []
    train = train / train.norm(dim=1, keepdim=True)
    for query in test / test.norm(dim=1, keepdim=True):
        sims = [(float(query @ t), int(label)) for t, label in zip(train, labels, strict=True)]
        sims.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += float(torch.exp(torch.tensor(sim / temperature)))
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


def test_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = (
        torch.randn(120, 8, generator=g, dtype=torch.float64),
        torch.randn(40, 8, generator=g, dtype=torch.float64),
    )
    labels = torch.randint(0, 5, (120,), generator=g)
    predictions = knn_classify(
        train, labels, test, 5, ks=(1, 7, 20, 500), temperature=0.1, query_chunk=7, key_chunk=11
    )
    for k in (1, 7, 20):
        assert torch.equal(predictions[k], brute_force_knn(train, labels, test, k, 0.1, 5)), k
    assert torch.equal(predictions[500], brute_force_knn(train, labels, test, 120, 0.1, 5)), (
        "k above N uses every image"
    )


def test_chunked_top_k_equals_full_top_k() -> None:
    g = torch.Generator().manual_seed(1)
    keys, queries = (
        F.normalize(torch.randn(100, 6, generator=g), dim=1),
        F.normalize(torch.randn(9, 6, generator=g), dim=1),
    )
    sim, idx = top_k_neighbours(queries, keys, k=10, key_chunk=13)
    full_sim, full_idx = (queries @ keys.T).topk(10, dim=1)
    assert torch.allclose(sim, full_sim) and torch.equal(idx, full_idx)


def test_accuracy_on_separable_clusters() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(300) % 3
    train = centres[labels] + torch.randn(300, 16, generator=g)
    accuracy = knn_accuracy(train, labels, train[:60], labels[:60], 3)
    assert accuracy == {20: 100.0, 200: 100.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, port: int, train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, out: dict
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # Each rank extracted a different, uneven share of the training set.
        bounds = [0, 50, 130]
        mine = slice(bounds[rank], bounds[rank + 1])
        all_train = gather_across_ranks(train[mine])
        all_labels = gather_across_ranks(labels[mine])
        out[rank] = knn_classify(all_train, all_labels, test, 4, ks=(20,))[20]
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_vote_over_the_whole_training_set() -> None:
    g = torch.Generator().manual_seed(3)
    train, test, labels = (
        torch.randn(130, 8, generator=g),
        torch.randn(25, 8, generator=g),
        torch.randint(0, 4, (130,), generator=g),
    )
    manager = mp.Manager()
    out = manager.dict()
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), train, labels, test, out), nprocs=2, join=True)
    except Exception as e:  # pragma: no cover - environments without process spawning
        pytest.skip(f"cannot start a 2-process gloo group here: {e}")
    single = knn_classify(train, labels, test, 4, ks=(20,))[20]
    assert torch.equal(out[0], single) and torch.equal(out[1], single)


def test_progress_callback_counts_every_test_row() -> None:
    g = torch.Generator().manual_seed(3)
    train, test = torch.randn(50, 8, generator=g), torch.randn(23, 8, generator=g)
    seen: list[int] = []
    knn_classify(train, torch.arange(50) % 2, test, 2, ks=(5,), query_chunk=10, on_chunk=seen.append)
    assert seen == [10, 10, 3]
