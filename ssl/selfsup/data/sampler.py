"""The pretraining data order: shuffled per epoch from the seed, sharded over ranks, resumable mid-epoch.

:class:`EpochSampler` yields ``(index, key)`` pairs: the sample's position in the source and its key
``sample_key(seed, epoch, index)`` (:mod:`selfsup.training.randomness`), from which the workers draw
the base augmentation and the task its pretext targets. The epoch thus reaches the workers inside
what they are asked to load, which works the same with ``num_workers`` 0 or more and with
persistent workers (no state shared with worker processes).

Sharding: the epoch's order (``randperm`` seeded ``seed + epoch``, as ``DistributedSampler`` does)
is cut to a multiple of the world size (``drop_last``) or padded by repeating its start, and rank
``r`` takes every ``world``-th sample from ``r``. Step ``t`` of N ranks with batch B/N then covers
exactly the samples of step ``t`` of one rank with batch B.

Resuming: :class:`ResumableLoader` is a ``DataLoader`` with ``state_dict``/``load_state_dict``
(Lightning's protocol for stateful dataloaders). The state is the epoch and the number of samples of
that epoch's global order already trained on, taken from the loop's own batch counter (the loader
itself cannot tell: Lightning fetches a batch ahead, and workers prefetch more). The restored
sampler starts its first iteration after those samples; Lightning's loop counts the batches it
skips as done, so the epoch ends where the uninterrupted one does.

The state must be in the sampler before the first iterator exists: with workers that iterator
starts prefetching at once, and Lightning creates it when the loader is first requested. That can be
before Lightning restores its loops (``trainer.estimated_stepping_batches``, which
``configure_optimizers`` asks for the schedule, loads the train loader during setup), so
Lightning's own restore of the loader state would come too late. The datamodule therefore saves the
same state in its own ``state_dict`` (restored before setup) and hands it to the loader it builds;
see :meth:`selfsup.data.datamodule.ImageDataModule.load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from selfsup.training.randomness import sample_key


class EpochSampler(DistributedSampler):
    """Shuffled, sharded sample order with per-sample keys; see the module docstring.

    A ``DistributedSampler`` subclass so that Lightning keeps it under DDP (it replaces any other
    sampler by its own, which would reorder and reshard the samples) and calls :meth:`set_epoch`.

    Args:
        size: number of samples in the dataset.
        seed: the run's seed.
        shuffle: a new order every epoch; False keeps the source's order.
        drop_last: cut the epoch to a multiple of ``num_replicas`` instead of padding it.
        num_replicas: world size.
        rank: this process's rank.
    """

    def __init__(
        self, size: int, *, seed: int, shuffle: bool, drop_last: bool, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(range(size), num_replicas, rank, shuffle, seed, drop_last)  # type: ignore[arg-type]
        self.size = size
        self.resume: tuple[int, int] | None = None  # (epoch, samples already done) for the next iteration

    def epoch_order(self) -> torch.Tensor:
        """(total_size,) long: the epoch's global order, cut or padded to a multiple of the world size."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.total_size <= self.size:
            return order[: self.total_size]
        repeats = -(-self.total_size // self.size)
        return order.repeat(repeats)[: self.total_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = 0
        if self.resume is not None and self.resume[0] == self.epoch:
            start = self.resume[1]
        self.resume = None
        order = self.epoch_order()[start:][self.rank :: self.num_replicas]
        keys = sample_key(self.seed, self.epoch, order)
        return iter(zip(order.tolist(), keys.tolist(), strict=True))


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning checkpoints and restores mid-epoch.

    Args:
        *args, **kwargs: those of ``DataLoader``; ``sampler`` must be an :class:`EpochSampler`.
        batches_done: the number of this epoch's batches the training loop has finished (at save
            time); None counts none (outside a Trainer).
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(self.sampler).__name__}")
        self.batches_done = batches_done

    @property
    def epoch_sampler(self) -> EpochSampler:
        assert isinstance(self.sampler, EpochSampler)
        return self.sampler

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``samples_done``: how far into that epoch's global order training has got."""
        sampler = self.epoch_sampler
        done = self.batches_done() if self.batches_done is not None else 0
        if done >= len(self):  # the epoch is complete: resume at the start of the next one
            return {"epoch": sampler.epoch + 1, "samples_done": 0}
        assert self.batch_size is not None
        return {"epoch": sampler.epoch, "samples_done": done * self.batch_size * sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration at ``samples_done`` of epoch ``epoch``.

        The epoch is set here too: with workers the iterator (and its prefetching) is created before
        Lightning calls ``set_epoch``.
        """
        sampler = self.epoch_sampler
        sampler.set_epoch(int(state["epoch"]))
        sampler.resume = (int(state["epoch"]), int(state["samples_done"]))
