"""BatchNorm over the global batch on every device, CPU (gloo) included, as a Lightning LayerSync plugin.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors (and DDP refuses it in a CPU module).
:class:`CPUSyncBatchNorm` synchronizes by itself: one all-reduce of each channel's sum, sum of squares
and count (a differentiable all-reduce, so gradients flow back to every rank), from which it
normalizes with the global mean and biased variance and updates the running statistics as
``nn.BatchNorm`` does (unbiased variance). On GPUs the plugin uses torch's own ``nn.SyncBatchNorm``:
fused kernels, NCCL, Welford merging of per-device statistics, tested at scale, so there is no reason
to replace it. The plugin :class:`GlobalBatchNorm` swaps every BatchNorm layer for one of them while
fitting and restores the original classes afterwards, sharing parameters and buffers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.plugins import LayerSync
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``; the gradient of each rank's input is the sum of all ranks' gradients.

    What ``torch.distributed.nn.functional.all_reduce`` does (deprecated since torch 2.10).
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def _world_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm of any dimension over the batches of all ranks of ``process_group`` (None: the world).

    Evaluation, and training on one process, are plain BatchNorm.
    """

    def __init__(
        self, *args: object, process_group: dist.ProcessGroup | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _world_size(self.process_group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        return self._global_batch_norm(input)

    def _global_batch_norm(self, x: Tensor) -> Tensor:
        """Normalize ``x`` (N, C, ...) by the statistics of all ranks' batches together."""
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # float64 sums: the variance is E[x^2] - E[x]^2, which loses digits in float32.
        x64 = x.double()
        count = torch.full((1,), x.numel() // channels, dtype=torch.float64, device=x.device)
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count])
        total = _AllReduceSum.apply(local, self.process_group or dist.group.WORLD)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        shape = (1, channels) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """As ``F.batch_norm`` in training: momentum (or cumulative) average, unbiased variance."""
        assert self.num_batches_tracked is not None
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        # momentum None: the cumulative average over the batches seen so far.
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def _rebuilt(module: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    """A ``cls`` with ``module``'s settings, sharing its parameters and buffers (no copies)."""
    new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    new.weight, new.bias = module.weight, module.bias
    new.running_mean, new.running_var = module.running_mean, module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    return new


SYNCED = (CPUSyncBatchNorm, nn.SyncBatchNorm)


class GlobalBatchNorm(LayerSync):
    """Lightning plugin: every BatchNorm layer normalizes over the global batch while fitting.

    Args:
        device_type: where the model trains (``trainer.strategy.root_device.type``; Lightning applies
            the plugin before moving the model there): ``cpu`` takes :class:`CPUSyncBatchNorm`, any
            other device torch's ``nn.SyncBatchNorm``.

    ``revert`` gives each layer back its original class (``BatchNorm2d``, ...), so exports and later
    stages see the model as it was built.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        self.device_type = device_type

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, _BatchNorm) and not isinstance(model, SYNCED):
            cls = CPUSyncBatchNorm if self.device_type == "cpu" else nn.SyncBatchNorm
            synced = _rebuilt(model, cls)
            synced.original_class = type(model)  # type: ignore[assignment]
            model = synced
        for name, child in model.named_children():
            model.add_module(name, self.apply(child))
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        if isinstance(model, SYNCED) and hasattr(model, "original_class"):
            model = _rebuilt(model, model.original_class)  # type: ignore[arg-type]
        for name, child in model.named_children():
            model.add_module(name, self.revert(child))
        return model
