"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO's protocol).

Features are L2-normalized; each test image's k most cosine-similar training images vote for their
class with weight ``exp(similarity / temperature)`` (DINO: k = 20 and 200, temperature 0.07). The
similarity matrix is computed in chunks of test rows and training columns, keeping a running top-k,
so memory stays bounded however large the sets are.

Under DDP the vote must be over the whole training set, never a per-rank split of it. The pipeline
guarantees this by evaluating on global rank 0 alone, over every training image; code that extracts
features per rank (a data-parallel extraction, an online monitor) gathers them first with
``gather_across_ranks``, after which every rank votes over all of them (tested with two processes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def gather_across_ranks(tensor: Tensor) -> Tensor:
    """Concatenate a tensor's rows from every DDP rank in rank order (itself outside DDP).

    Ranks may hold different numbers of rows; rows are padded for the collective and trimmed after.

    Args:
        tensor: (N_rank, ...) on this rank.

    Returns:
        (sum of N_rank, ...) identical on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    # NCCL moves only CUDA tensors: gather on this rank's GPU, return on the tensor's own device.
    source_device = tensor.device
    if dist.get_backend() == "nccl":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    gathered = torch.cat([chunk[: int(size.item())] for chunk, size in zip(chunks, sizes, strict=True)])
    return gathered.to(source_device)


def top_k_neighbours(queries: Tensor, keys: Tensor, k: int, key_chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """The k largest dot products of each query with the keys, scanning keys in chunks.

    Args:
        queries: (M, D) normalized features.
        keys: (N, D) normalized features.
        k: neighbours per query (at most N).
        key_chunk: keys compared at a time (bounds memory at M x (k + key_chunk)).

    Returns:
        similarities (M, k) in decreasing order, and the indices (M, k) of those keys.
    """
    best_sim = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device)
    best_idx = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[0], key_chunk):
        sim = queries @ keys[start : start + key_chunk].T
        idx = torch.arange(start, start + sim.shape[1], device=queries.device).expand_as(sim)
        merged_sim, order = torch.cat([best_sim, sim], dim=1).topk(
            min(k, best_sim.shape[1] + sim.shape[1]), dim=1
        )
        best_idx = torch.cat([best_idx, idx], dim=1).gather(1, order)
        best_sim = merged_sim
    return best_sim, best_idx


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    query_chunk: int = 1024,
    key_chunk: int = 8192,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[int, Tensor]:
    """Temperature-weighted kNN predictions for each k.

    Args:
        train_features: (N, D) features (normalized here).
        train_labels: (N,) class indices.
        test_features: (M, D).
        num_classes: number of classes.
        ks: neighbour counts; one prediction per k (k larger than N uses all N).
        temperature: similarity temperature of the vote weights.
        query_chunk: test rows per similarity block.
        key_chunk: training rows per similarity block.
        on_chunk: called with the number of test rows classified after each block (progress).

    Returns:
        k -> (M,) predicted class indices.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    keys = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(keys.device)
    k_max = min(max(ks), keys.shape[0])
    predictions: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, queries.shape[0], query_chunk):
        sim, idx = top_k_neighbours(queries[start : start + query_chunk], keys, k_max, key_chunk)
        weights, neighbour_labels = (sim / temperature).exp(), labels[idx]  # (m, k_max) each
        for k in ks:
            used = min(k, k_max)
            # Class scores (m, C): each neighbour adds its weight to its class (no (m, k, C) one-hot).
            scores = weights.new_zeros(weights.shape[0], num_classes)
            scores.scatter_add_(1, neighbour_labels[:, :used], weights[:, :used])
            predictions[k].append(scores.argmax(dim=1))
        if on_chunk is not None:
            on_chunk(weights.shape[0])
    return {k: torch.cat(chunks) for k, chunks in predictions.items()}


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """Top-1 accuracy in percent of :func:`knn_classify` for each k (``on_chunk``: as there)."""
    predictions = knn_classify(
        train_features, train_labels, test_features, num_classes, ks, temperature, on_chunk=on_chunk
    )
    labels = test_labels.to(next(iter(predictions.values())).device)
    return {k: 100.0 * (pred == labels).float().mean().item() for k, pred in predictions.items()}
