"""The fast step's switches compute what the plain step computes, and nothing in a step reads the device.

channels_last and torch.compile change how the step runs, never what it computes: the same loss and
gradients as eager, on the CPU, in float64. (In float32 the gradients of a small-batch BatchNorm
network differ by up to 0.6 % from other kernels' summation orders alone, which would hide a real
difference; float64 leaves 1e-10.)
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from selfsup.encoders import ResNetEncoder
from selfsup.tasks.mae import MAE
from selfsup.tasks.rotnet import RotNet
from selfsup.training.callbacks import ProgressBar
from selfsup.training.performance import apply_performance_switches
from selfsup.training.randomness import sample_key


def _loss_and_grads(
    task: torch.nn.Module, images: torch.Tensor, keys: torch.Tensor
) -> tuple[float, torch.Tensor]:
    task.zero_grad(set_to_none=True)
    loss = task.step(images, keys).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in task.parameters() if p.grad is not None])
    return float(loss.detach()), grads


def _assert_same_step(fast: tuple[float, torch.Tensor], eager: tuple[float, torch.Tensor]) -> None:
    """Equal losses and gradients, up to float64 rounding (other kernels sum in other orders)."""
    assert fast[0] == pytest.approx(eager[0], rel=1e-9)
    assert fast[1].shape == eager[1].shape
    assert float((fast[1] - eager[1]).norm() / eager[1].norm()) < 1e-8


def _rotnet() -> RotNet:
    torch.manual_seed(0)
    return RotNet(ResNetEncoder(depth=18, cifar_stem=True), rotations="random").double().train()


@pytest.mark.parametrize("switch", ["channels_last", pytest.param("compile", marks=pytest.mark.slow)])
def test_a_switch_gives_the_eager_loss_and_gradients(switch: str) -> None:
    images = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    keys = sample_key(0, 0, torch.arange(8))
    eager = _rotnet()
    fast = _rotnet()
    fast.load_state_dict(eager.state_dict())
    apply_performance_switches(fast, channels_last=switch == "channels_last", compile=switch == "compile")
    _assert_same_step(_loss_and_grads(fast, images, keys), _loss_and_grads(eager, images, keys))


@pytest.mark.slow
def test_compiling_mae_compiles_its_whole_step() -> None:
    """MAE calls the ViT's parts, not its forward: compiling the step still covers encoder and decoder."""
    from selfsup.encoders.vit import ViTEncoder

    torch.manual_seed(0)

    def mae() -> MAE:
        vit = ViTEncoder(image_size=32, patch_size=8, width=48, depth=2, num_heads=3)
        return MAE(vit, decoder_width=32, decoder_depth=1, reconstructions=None).double().train()

    eager, fast = mae(), mae()
    fast.load_state_dict(eager.state_dict())
    apply_performance_switches(fast, channels_last=False, compile=True)
    images, keys = torch.randn(4, 3, 32, 32, dtype=torch.float64), sample_key(0, 0, torch.arange(4))
    _assert_same_step(_loss_and_grads(fast, images, keys), _loss_and_grads(eager, images, keys))


class _CountingScalar:
    """A logged value that counts how often it is read back (``float()``, as ``.item()`` would sync)."""

    reads = 0

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        _CountingScalar.reads += 1
        return self.value


def test_the_progress_bar_reads_metrics_only_every_n_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "pytorch_lightning.callbacks.RichProgressBar.get_metrics", lambda self, t, m: {"v_num": 0}
    )
    bar = ProgressBar(metrics_every_n_steps=10)
    _CountingScalar.reads = 0
    shown = []
    for step in range(25):
        logged = {"train/loss": _CountingScalar(float(step)), "lr": _CountingScalar(1.0)}
        trainer = SimpleNamespace(global_step=step, training=True, callback_metrics=logged)
        shown.append(bar.get_metrics(trainer, None))
    assert _CountingScalar.reads == 3, "read at steps 0, 10 and 20 only, and only the train/ metrics"
    assert (
        shown[9]["train/loss"] == 0.0 and shown[10]["train/loss"] == 10.0 and shown[24]["train/loss"] == 20.0
    )
    assert "lr" not in shown[0] and shown[0]["v_num"] == 0


def test_training_logs_nothing_for_lightning_to_read_back_every_batch(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning converts progress-bar metrics to numbers after every batch: the tasks log none there."""
    import importlib

    from tests.conftest import FAST

    stage = importlib.import_module(
        "selfsup.stages.pretrain"
    )  # the module; selfsup.stages exports the function

    seen: list[dict[str, float]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            seen.append(dict(trainer.progress_bar_metrics))

    def build_with_watch(cfg, **kwargs):
        trainer = build_trainer(cfg, **kwargs)
        trainer.callbacks.append(Watch())
        return trainer

    build_trainer = stage.build_trainer
    monkeypatch.setattr(stage, "build_trainer", build_with_watch)
    results = stage.pretrain(make_cfg([*FAST, "trainer.max_steps=3"]))
    assert results["steps"] == 3 and len(seen) == 3
    assert not [name for metrics in seen for name in metrics if name.startswith("train/")]


# Each task with a small encoder it can train; the ViT tasks on a ViT.
TASK_ENCODERS = {
    "rotnet": ["encoder=resnet18"],
    "jigsaw": ["encoder=resnet18", "encoder.cifar_stem=auto"],  # its tiles are 17 px
    "mae": ["encoder=vit_tiny"],
    "simmim": ["encoder=vit_tiny"],
}


def _task_step(
    make_cfg, task_name: str, device: str
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    """A task of ``conf/task/<name>.yaml`` on ``device`` and one bf16 training step (fused optimizer on GPUs)."""
    from selfsup.stages.components import build_pretext_encoder, build_task
    from selfsup.training.optim import build_optimizer

    cfg = make_cfg([f"task={task_name}", *TASK_ENCODERS[task_name], "data.image_size=64"])
    task = build_task(cfg, build_pretext_encoder(cfg)).to(device).train()
    apply_performance_switches(task, channels_last=task_name in ("rotnet", "jigsaw"), compile=False)
    optimizer = build_optimizer(torch.optim.AdamW, [task], 1e-3, 0.05, True)
    images = torch.randn(16, 3, 64, 64, device=device)
    keys = sample_key(0, 0, torch.arange(16, device=device))

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = task.step(images, keys).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return task, optimizer, step


@pytest.mark.parametrize("task_name", list(TASK_ENCODERS))
def test_every_task_runs_the_fast_step_on_the_cpu(make_cfg, task_name: str) -> None:
    """What the GPU test below runs, on the CPU: bf16 autocast, channels_last, AdamW."""
    task, _, step = _task_step(make_cfg, task_name, "cpu")
    step()
    assert all(torch.isfinite(p).all() for p in task.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("task_name", list(TASK_ENCODERS))
def test_a_task_step_never_waits_for_the_gpu(make_cfg, task_name: str) -> None:
    """No host-device synchronisation in a bf16 step, its backward and the fused optimizer step."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    _, optimizer, step = _task_step(make_cfg, task_name, "cuda")
    assert optimizer.defaults.get("fused") is True, "torch's fused AdamW on CUDA"
    step()  # warm-up: cuDNN autotuning and lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_compiled_task_copies_and_pickles_with_its_own_weights() -> None:
    """The compiled step is the class's function called with the task: a copy steps its own weights
    (an EMA or SWA copy must not train the original's), and pickling (ddp_spawn) works."""
    import copy
    import pickle

    task = _rotnet()
    task.compile_step()  # lazy: nothing is compiled until the first call
    twin = copy.deepcopy(task)
    assert callable(twin.__dict__.get("_compiled_step")), "compiled again for the copy"
    again = pickle.loads(pickle.dumps(task))
    assert callable(again.__dict__.get("_compiled_step")) and again._compile_mode is None
    calls: list[object] = []

    def shared(self: object, images: torch.Tensor, keys: object) -> None:  # stands in for the compiled one
        calls.append(self)

    shallow = copy.copy(task)  # shares the function object with the original
    task.__dict__["_compiled_step"] = shallow.__dict__["_compiled_step"] = shared
    shallow.step(torch.zeros(1), None)
    task.step(torch.zeros(1), None)
    assert calls[0] is shallow and calls[1] is task
