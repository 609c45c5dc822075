"""SyncBatchNorm on CPU: 2 gloo processes compute what one BatchNorm computes on the concatenated batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selfsup.training.sync_batchnorm import CPUSyncBatchNorm, GlobalBatchNorm

WORLD = 2
STEPS = 3
DIMS = (4, 2)  # BatchNorm2d on images, BatchNorm1d on vectors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batches(dims: int) -> list[torch.Tensor]:
    """STEPS global batches of 8 images (or 8 vectors), with a large offset so that float32 would lose digits."""
    g = torch.Generator().manual_seed(0)
    shape = (8, 3, 5, 4) if dims == 4 else (8, 3)
    return [torch.randn(*shape, generator=g) * 2 + 10 for _ in range(STEPS)]


def _model(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    return norm


def _run(norm: nn.Module, batches: list[torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Forward and backward of each rank's share of each batch; outputs, input gradients, final state."""
    outputs, grads = [], []
    g = torch.Generator().manual_seed(1)
    for batch in batches:
        weights = torch.randn(batch.shape, generator=g)  # a loss that weighs every output differently
        share = batch.shape[0] // world
        x = batch[rank * share : (rank + 1) * share].clone().requires_grad_(True)
        y = norm(x)
        # The loss of one process is the mean over its share; DDP averages the parameter gradients.
        (y * weights[rank * share : (rank + 1) * share]).sum().div(batch.shape[0]).mul(world).backward()
        outputs.append(y.detach())
        grads.append(x.grad / world)  # W times the global loss's: each rank's loss is W x its share
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    state["weight.grad"] = norm.weight.grad / world
    state["bias.grad"] = norm.bias.grad / world
    if world > 1:
        for key in ("weight.grad", "bias.grad"):
            dist.all_reduce(state[key])
    return {"outputs": torch.cat(outputs), "grads": torch.cat(grads), **state}


def _norm(dims: int) -> nn.Module:
    return _model(nn.BatchNorm2d(3, momentum=0.3) if dims == 4 else nn.BatchNorm1d(3, momentum=None))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for dims in DIMS:
            norm = GlobalBatchNorm().apply(_norm(dims))
            assert isinstance(norm, CPUSyncBatchNorm)
            torch.save(_run(norm, _batches(dims), rank, WORLD), f"{out}.{dims}.{rank}")
    finally:
        dist.destroy_process_group()


def _compare(out: str, dims: int) -> None:
    expected = _run(_norm(dims), _batches(dims), 0, 1)
    ranks = [torch.load(f"{out}.{dims}.{rank}") for rank in range(WORLD)]
    share = 8 // WORLD
    for key in ("outputs", "grads"):
        # Each rank's rows of each step, put back in the global batch's order.
        got = torch.cat(
            [torch.cat([r[key][s * share : (s + 1) * share] for r in ranks]) for s in range(STEPS)]
        )
        torch.testing.assert_close(got, expected[key], atol=1e-6, rtol=0, msg=key)
    for key in ("running_mean", "running_var", "num_batches_tracked", "weight.grad", "bias.grad"):
        for rank in ranks:
            torch.testing.assert_close(rank[key], expected[key], atol=1e-6, rtol=0, msg=key)


def test_two_gloo_processes_equal_one_batchnorm_on_the_whole_batch(tmp_path: Path) -> None:
    """BatchNorm2d (momentum) and BatchNorm1d (cumulative average): outputs, gradients, running stats."""
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=WORLD, start_method="spawn")
    for dims in DIMS:
        _compare(out, dims)


def test_revert_restores_the_original_classes_sharing_the_tensors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    weight = model[1].weight
    synced = GlobalBatchNorm().apply(model)
    assert isinstance(synced[1], CPUSyncBatchNorm) and isinstance(synced[2][0], CPUSyncBatchNorm)
    assert synced[1].weight is weight
    reverted = GlobalBatchNorm().revert(synced)
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[2][0]) is nn.BatchNorm1d
    assert reverted[1].weight is weight


def test_one_process_is_plain_batchnorm() -> None:
    x = torch.randn(6, 3, 4, 4)
    plain = nn.BatchNorm2d(3)
    synced = GlobalBatchNorm().apply(nn.BatchNorm2d(3))
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)


def test_on_gpus_torch_sync_batchnorm_is_used_and_reverted() -> None:
    model = nn.Sequential(nn.BatchNorm2d(4))
    synced = GlobalBatchNorm("cuda").apply(model)
    assert type(synced[0]) is nn.SyncBatchNorm
    assert type(GlobalBatchNorm("cuda").revert(synced)[0]) is nn.BatchNorm2d
