"""Per-sample randomness: every random choice about a sample is a function of (seed, epoch, index).

A *key* is one int64 per sample, ``sample_key(seed, epoch, index)``. Each random choice derives its
own stream from the key and a fixed *purpose* (crop, flip, rotation, mask, ...), and draws from it
with a counter-based generator: word ``c`` of a stream is ``mix64(stream + c * GOLDEN)``, with
splitmix64's 64-bit finalizer as the mixer. Nothing is stateful, so:

- one process, N processes with a share of the batch each, and a resumed run draw the same thing
  for a sample (the draw does not depend on which batch, rank or worker the sample lands in);
- the same functions run batched on the device (tasks: one call for the whole batch, no Python loop
  over samples) and per sample in CPU data workers (the base augmentation);
- CPU and CUDA give the same bits: int64 arithmetic wraps modulo 2^64 on both.

Tasks called without keys (library use, tests) draw keys from a ``torch.Generator`` instead
(:func:`random_keys`), so every draw still has the distribution documented for it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment: 2^64 / golden ratio
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_LOW53 = (1 << 53) - 1

# Purposes: each random choice has its own stream (fixed numbers: they define the draws, never reuse one).
CROP, FLIP, ROTATION, MASK, PERMUTATION, ORIGIN, OFFSETS, JITTER, GRAYSCALE = range(1, 10)
# The seed of a library transform that draws from torch's generator (RandAugment), forked per sample.
LIBRARY_SEED = 10
# RotNet's optional mirror after the rotation (VISSL's transform order).
ROTATION_FLIP = 11
_SEED, _EPOCH = 101, 102


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical (unsigned) right shift of int64 ``x``; torch's ``>>`` is arithmetic."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 tensors (any shape): a bijection that scrambles every bit."""
    x = (x ^ _shift_right(x, 30)) * _MUL1
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def _as_int64(value: int | Tensor, device: torch.device | str | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=device if device is not None else value.device, dtype=torch.int64)
    return torch.tensor(_signed(value % (1 << 64)), dtype=torch.int64, device=device)


def sample_key(seed: int, epoch: int, index: int | Tensor) -> Tensor:
    """The key of sample ``index`` (positions in the source, any shape) in ``epoch`` of a run seeded ``seed``."""
    index = _as_int64(index)
    key = mix64(_as_int64(seed, index.device) * GOLDEN + _SEED)
    key = mix64(key ^ mix64(_as_int64(epoch, index.device) * GOLDEN + _EPOCH))
    return mix64(key ^ mix64(index * GOLDEN))


def random_keys(
    batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """(batch,) int64 keys drawn from ``generator`` (on ``device``; None: torch's global one), for
    callers that have no sample keys."""
    low, high = -(1 << 63), (1 << 63) - 1
    return torch.randint(low, high, (batch,), device=device, dtype=torch.int64, generator=generator)


def bits(keys: Tensor, purpose: int, count: int) -> Tensor:
    """(B,) keys -> (B, count) int64 random words of the ``purpose`` stream of each key."""
    stream = mix64(keys ^ mix64(_as_int64(purpose, keys.device) * GOLDEN))
    counters = torch.arange(1, count + 1, device=keys.device, dtype=torch.int64) * GOLDEN
    return mix64(stream.unsqueeze(-1) + counters)


def uniform(keys: Tensor, purpose: int, count: int) -> Tensor:
    """(B,) keys -> (B, count) float64 uniform in [0, 1), 53 random bits each."""
    return _shift_right(bits(keys, purpose, count), 11).double() * 2.0**-53


def integers(keys: Tensor, purpose: int, count: int, high: int | Tensor) -> Tensor:
    """(B,) keys -> (B, count) int64 uniform in [0, high); ``high`` an int or broadcastable to (B, count).

    The modulo of a 53-bit word: its bias is below high / 2^53, far under any measurable effect.
    """
    return _shift_right(bits(keys, purpose, count), 11) % high
