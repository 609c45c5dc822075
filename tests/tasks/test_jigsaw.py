"""Jigsaw: tiles come from the cells their permutation names, label k is permutation k, the head sees
tiles in order, anti-shortcut options do what they say, the config check refuses too-small tiles,
training learns and the exported tile encoder reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.encoders import ResNetEncoder, ViTEncoder, load
from selfsup.errors import ConfigError
from selfsup.reports.puzzles import PuzzleGrid, draw_puzzles
from selfsup.run_dir import RunDir
from selfsup.stages.components import build_pretraining
from selfsup.stages.pretrain import pretrain
from selfsup.tasks.jigsaw import Jigsaw, Puzzles, make_puzzles
from selfsup.tasks.patches import PuzzleGeometry
from selfsup.tasks.permutations import hamming_stats, permutation_set
from tests.conftest import FAST

GEOMETRY = PuzzleGeometry(grid_size=3, cell_size=12, tile_size=9)
SMALL_HEAD = {"num_permutations": 10, "tile_dim": 16, "head_hidden_dims": [32], "permutation_cache": None}


def tiny_vit() -> ViTEncoder:
    return ViTEncoder(image_size=36, patch_size=4, width=64, depth=1, num_heads=2)


def random_permutations(count: int, n: int = 9, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(count)])


def cell_crop(image: torch.Tensor, origin: torch.Tensor, offset: torch.Tensor, cell: int) -> torch.Tensor:
    """The tile of ``cell`` in ``image`` (C, H, W), written out from the geometry by hand."""
    row, col = divmod(cell, GEOMETRY.grid_size)
    top = int(origin[0]) + row * GEOMETRY.cell_size + int(offset[0])
    left = int(origin[1]) + col * GEOMETRY.cell_size + int(offset[1])
    return image[:, top : top + GEOMETRY.tile_size, left : left + GEOMETRY.tile_size]


def test_tile_at_position_p_is_the_crop_of_cell_perm_p() -> None:
    images = torch.randn(16, 3, 41, 41)  # 5 px of room around the 36 px window
    perms = random_permutations(20)
    generator = torch.Generator().manual_seed(1)
    puzzles = make_puzzles(images, perms, GEOMETRY, normalize=False, generator=generator)
    assert puzzles.tiles.shape == (16, 9, 3, 9, 9)
    assert len(set(puzzles.labels.tolist())) > 1 and len({tuple(o) for o in puzzles.origins.tolist()}) > 1
    assert ((puzzles.origins >= 0) & (puzzles.origins <= 41 - 36)).all()
    assert ((puzzles.offsets >= 0) & (puzzles.offsets <= 12 - 9)).all()
    for b in range(16):
        perm = perms[puzzles.labels[b]]
        assert torch.equal(puzzles.order[b], perm)
        for p in range(9):
            cell = int(perm[p])
            expected = cell_crop(images[b], puzzles.origins[b], puzzles.offsets[b, cell], cell)
            assert torch.equal(puzzles.tiles[b, p], expected)


def test_label_k_is_permutation_k_of_the_set(tmp_path: Path) -> None:
    task = Jigsaw(
        tiny_vit(), image_size=36, tile_size=8, **{**SMALL_HEAD, "permutation_cache": str(tmp_path)}
    )
    expected = permutation_set(10, 9, "max_avg", seed=0)
    assert torch.equal(task.permutations, expected)
    assert torch.equal(task.state_dict()["permutations"], expected)  # checkpoints keep the classes
    images = torch.randn(32, 3, 36, 36)
    puzzles = task.puzzles(images)
    assert torch.equal(puzzles.order, expected[puzzles.labels])


def test_channel_jitter_shifts_each_colour_channel_a_little() -> None:
    images = torch.randn(8, 3, 40, 40)
    generator = torch.Generator().manual_seed(0)
    puzzles = make_puzzles(
        images, random_permutations(5), GEOMETRY, channel_jitter=2, normalize=False, generator=generator
    )
    shifts_seen = set()
    for b in range(8):
        for p in range(9):
            cell = int(puzzles.order[b, p])
            for c in range(3):
                tile = puzzles.tiles[b, p, c]
                matches = [
                    (dy, dx)
                    for dy in range(-2, 3)
                    for dx in range(-2, 3)
                    if torch.equal(tile, _shifted_crop(images[b, c], puzzles, b, cell, dy, dx))
                ]
                assert matches, "each channel is its cell's crop, shifted by at most 2 px"
                shifts_seen.add(matches[0])
    assert len(shifts_seen) > 5


def _shifted_crop(
    channel: torch.Tensor, puzzles: Puzzles, b: int, cell: int, dy: int, dx: int
) -> torch.Tensor:
    """The crop of ``cell`` in one (H, W) channel moved by (dy, dx), kept inside the image."""
    row, col = divmod(cell, GEOMETRY.grid_size)
    size, limit = GEOMETRY.tile_size, channel.shape[-1] - GEOMETRY.tile_size
    top = int(puzzles.origins[b, 0]) + row * GEOMETRY.cell_size + int(puzzles.offsets[b, cell, 0]) + dy
    left = int(puzzles.origins[b, 1]) + col * GEOMETRY.cell_size + int(puzzles.offsets[b, cell, 1]) + dx
    top, left = min(max(top, 0), limit), min(max(left, 0), limit)
    return channel[top : top + size, left : left + size]


def test_grayscale_puzzles_have_one_unshifted_channel() -> None:
    images = torch.randn(6, 3, 36, 36)
    gray = make_puzzles(images, random_permutations(4), GEOMETRY, 2, grayscale_fraction=1.0, normalize=False)
    assert torch.equal(gray.tiles[:, :, 0], gray.tiles[:, :, 1])
    assert torch.equal(gray.tiles[:, :, 1], gray.tiles[:, :, 2])
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    b, p = 3, 4
    cell = int(gray.order[b, p])
    expected = cell_crop(luma[b][None], gray.origins[b], gray.offsets[b, cell], cell)[0]
    torch.testing.assert_close(gray.tiles[b, p, 0], expected)
    colour = make_puzzles(images, random_permutations(4), GEOMETRY, grayscale_fraction=0.0)
    assert not torch.equal(colour.tiles[:, :, 0], colour.tiles[:, :, 1])


def test_head_receives_tiles_in_order() -> None:
    task = Jigsaw(ResNetEncoder(18, cifar_stem=True), image_size=36, **SMALL_HEAD).eval()
    seen: list[torch.Tensor] = []
    task.classifier.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    tiles = torch.randn(2, 9, 3, 9, 9)
    with torch.no_grad():
        task.solve(tiles)
        head_input = seen[0].view(2, 9, 16)
        for p in range(9):
            alone = task.tile_projection(task.encoder(tiles[:, p]))
            torch.testing.assert_close(head_input[:, p], alone, atol=1e-5, rtol=1e-4)


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    # Each cell of the images holds its own brightness, so a tile says where it came from: the
    # network only has to learn to read nine of them back into a permutation index.
    cells = torch.arange(9.0).view(1, 1, 3, 3) - 4
    images = cells.repeat_interleave(12, dim=2).repeat_interleave(12, dim=3).expand(16, 3, 36, 36)
    images = images + 0.1 * torch.randn(16, 3, 36, 36)
    task = Jigsaw(
        tiny_vit(),
        image_size=36,
        tile_size=8,
        num_permutations=8,
        normalize_tiles=False,
        channel_jitter=0,
        grayscale_fraction=0.0,
        tile_dim=32,
        head_hidden_dims=[64],
        permutation_cache=None,
    )
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        out = task.pretext_step(images)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])


def test_accuracies_count_right_puzzles_and_right_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    task = Jigsaw(tiny_vit(), image_size=36, tile_size=8, **SMALL_HEAD)
    perms = task.permutations
    labels, predicted = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 5, 6])
    tiles = torch.randn(4, 9, 3, 8, 8)
    puzzles = Puzzles(tiles, labels, perms[labels], torch.zeros(4, 2), torch.zeros(4, 9, 2))
    monkeypatch.setattr(task, "puzzles", lambda images, keys=None: puzzles)
    monkeypatch.setattr(task, "solve", lambda tiles: torch.nn.functional.one_hot(predicted, 10).float())
    out = task.pretext_step(torch.randn(4, 3, 36, 36))
    # Two of four puzzles right; a wrong permutation still places 9 - (Hamming distance) tiles right.
    right_tiles = 9 + 9 + sum(9 - hamming_stats(perms[[p, q]]).min for p, q in [(5, 2), (6, 3)])
    assert out.metrics["jigsaw_acc"].item() == 0.5
    assert out.metrics["tile_acc"].item() == pytest.approx(right_tiles / 36)
    assert out.loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(torch.nn.functional.one_hot(predicted, 10).float(), labels).item()
    )


def test_works_with_a_vit_on_tiles() -> None:
    encoder = tiny_vit()
    task = Jigsaw(encoder, image_size=36, tile_size=8, **SMALL_HEAD)
    task.check_input(36)
    out = task.pretext_step(torch.randn(4, 3, 36, 36))
    out.loss.backward()
    assert encoder.patch_proj.weight.grad is not None


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (lambda: ResNetEncoder(18, cifar_stem=False), "9 px Jigsaw tiles.*cifar_stem=true"),
        (tiny_vit, "patch size 4"),
    ],
)
def test_tiles_too_small_for_the_encoder_are_refused(encoder, message: str) -> None:
    task = Jigsaw(encoder(), image_size=36, tile_size=9, **SMALL_HEAD)
    with pytest.raises(ValueError, match=message):
        task.check_input(36)


def test_config_check_names_the_key_before_training(make_cfg) -> None:
    cfg = make_cfg(["task=jigsaw", *FAST, "encoder.cifar_stem=false", "task.num_permutations=10"])
    with pytest.raises(
        ConfigError, match=r"'data.image_size'.*Jigsaw feeds its encoder 8 px inputs on 32 px images"
    ):
        build_pretraining(cfg)
    cfg = make_cfg(["task=jigsaw", *FAST, "encoder.cifar_stem=true", "task.cell_size=20"])
    with pytest.raises(ConfigError, match=r"'task'.*covers 3 x 20 px = 60 px but the images are 32 px"):
        build_pretraining(cfg)


def test_pretraining_exports_a_tile_encoder_for_whole_images(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        [
            "task=jigsaw",
            *FAST,
            "encoder.cifar_stem=true",
            "task.num_permutations=10",
            "task.tile_dim=16",
            "task.head_hidden_dims=[32]",
            "task.report_puzzles=3",
        ]
    )
    metrics = pretrain(cfg)
    # The logged accuracies are the last step's: over its 8 puzzles and their 72 tiles.
    assert metrics["steps"] == 2
    assert metrics["jigsaw_acc"] * 8 == pytest.approx(round(metrics["jigsaw_acc"] * 8), abs=1e-4)
    assert metrics["tile_acc"] * 72 == pytest.approx(round(metrics["tile_acc"] * 72), abs=1e-3)
    assert metrics["tile_acc"] >= metrics["jigsaw_acc"]  # a right puzzle has all its tiles right
    run_dir = RunDir.default(tmp_path / "run")
    encoder = load(run_dir.encoder)
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    with Image.open(run_dir.puzzles) as picture:  # drawn by PuzzleGrid: three rows of 2.7 in at 100 dpi
        assert picture.size == (750, 3 * 270)
    assert [p.name for p in (tmp_path / "cache" / "permutations").iterdir()] == [
        "max_avg_n9_count10_seed0.npy"
    ]


def test_the_puzzle_picture_is_a_callback_of_the_task_only_when_asked_for() -> None:
    task = Jigsaw(tiny_vit(), image_size=36, tile_size=8, **SMALL_HEAD, report_puzzles=3)
    (callback,) = task.configure_callbacks()
    assert isinstance(callback, PuzzleGrid) and callback.num_puzzles == 3
    assert (
        Jigsaw(tiny_vit(), image_size=36, tile_size=8, **SMALL_HEAD, report_puzzles=0).configure_callbacks()
        == []
    )


def test_puzzles_are_drawn_in_eval_mode_and_the_mode_is_restored(tmp_path: Path) -> None:
    task = Jigsaw(tiny_vit(), image_size=36, tile_size=8, **SMALL_HEAD)
    modes: list[bool] = []
    task.classifier.register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    path = draw_puzzles(task, torch.randn(2, 3, 36, 36), tmp_path / "p.png")
    assert modes == [False] and task.training
    with Image.open(path) as picture:
        assert picture.size == (750, 2 * 270)


def test_chance_levels_come_from_the_task() -> None:
    from selfsup.tasks.rotnet import RotNet

    task = Jigsaw(ResNetEncoder(18, cifar_stem=True), image_size=36, **{**SMALL_HEAD, "num_permutations": 10})
    assert task.chance_levels() == {"jigsaw_acc": 0.1}
    assert RotNet(
        ResNetEncoder(18, cifar_stem=True), rotations="random", head_hidden_dims=[]
    ).chance_levels() == {"rotation_acc": 0.25}


@pytest.mark.parametrize(
    ("task", "image_size", "small_stem"),
    [("jigsaw", 64, True), ("rotnet", 64, False), ("rotnet", 16, True), ("simmim", 64, False)],
)
def test_the_default_resnet_is_built_for_what_the_task_feeds_it(
    make_cfg, task: str, image_size: int, small_stem: bool
) -> None:
    """``cifar_stem: auto``: the small stem below 32 px encoder inputs (Jigsaw's 18 px tiles of 64 px images)."""
    extra = ["task.num_permutations=10"] if task == "jigsaw" else []
    cfg = make_cfg([f"task={task}", *FAST, f"data.image_size={image_size}", *extra])
    assert cfg.encoder.cifar_stem == "auto"
    parts = build_pretraining(cfg)
    assert parts.encoder.cifar_stem is small_stem
    assert parts.encoder.config["cifar_stem"] is small_stem, "the export records the choice, not 'auto'"


def test_a_vit_is_built_for_the_tiles_it_sees(make_cfg) -> None:
    # 48 px images: 16 px cells, 13 px tiles by default; 12 px tiles are a multiple of 4 px patches.
    overrides = ["task=jigsaw", *FAST, "data.image_size=48", "task.tile_size=12", "task.num_permutations=10"]
    cfg = make_cfg([*overrides, "encoder=vit_tiny", "encoder.patch_size=4", "encoder.depth=1"])
    assert build_pretraining(cfg).encoder.image_size == 12


def test_jigsaw_with_the_default_encoder_trains_and_exports_its_choice(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["task=jigsaw", *FAST, "data.image_size=64", "task.num_permutations=10"])
    pretrain(cfg)
    assert load(RunDir.from_config(cfg).encoder).cifar_stem is True


def test_the_main_job_refuses_tiles_too_small_for_the_encoder_before_training(make_cfg) -> None:
    from selfsup.stages.pipeline import check_eval_against_encoder

    cfg = make_cfg(["task=jigsaw", *FAST, "encoder.cifar_stem=false"], config_name="pipeline")
    with pytest.raises(ConfigError, match=r"'data.image_size'.*Jigsaw feeds its encoder 8 px inputs"):
        check_eval_against_encoder(cfg)


@pytest.mark.parametrize(
    ("experiment", "cell", "window"), [("jigsaw_paper", 85, 255), ("jigsaw_paper_text", 75, 225)]
)
def test_the_paper_presets_geometry_and_dropout(make_cfg, experiment: str, cell: int, window: int) -> None:
    """The released code's 255/85/64 (the preset) and the paper text's 225/75/64, fc6/fc7 dropout 0.5."""
    cfg = make_cfg([f"experiment={experiment}"])
    assert (cfg.task.cell_size, cfg.task.tile_size, cfg.task.dropout) == (cell, 64, 0.5)
    geometry = PuzzleGeometry.fit(
        int(cfg.data.image_size), cfg.task.grid_size, cfg.task.cell_size, cfg.task.tile_size
    )
    assert (geometry.window_size, geometry.cell_size, geometry.tile_size) == (window, cell, 64)
    task = Jigsaw(
        ResNetEncoder(18, cifar_stem=True),
        image_size=256,
        cell_size=cell,
        tile_size=64,
        dropout=0.5,
        **SMALL_HEAD,
    )
    dropouts = [m for m in task.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 2 and all(m.p == 0.5 for m in dropouts), "after fc6 and after fc7"
    plain = Jigsaw(
        ResNetEncoder(18, cifar_stem=True), image_size=256, cell_size=cell, tile_size=64, **SMALL_HEAD
    )
    assert not [m for m in plain.modules() if isinstance(m, torch.nn.Dropout)], "dropout 0 adds no module"
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in task.parameters())


def test_goyal_et_al_resnet50_recipe(make_cfg) -> None:
    """VISSL's jigsaw_8gpu_resnet.yaml: per tile 2048 -> 1000 + BN + ReLU, concatenated, one Linear to
    2000 permutations; SGD 0.1 x batch / 256 (momentum 0.9, not Nesterov), wd 1e-4, 105 epochs."""
    cfg = make_cfg(["experiment=jigsaw_goyal_rn50"])
    task_cfg = cfg.task
    assert (task_cfg.num_permutations, task_cfg.grayscale_fraction, task_cfg.channel_jitter) == (
        2000,
        0.66,
        0,
    )
    assert (cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.weight_decay) == (0.1, "linear", 1e-4)
    assert cfg.optim.optimizer.nesterov is False and cfg.trainer.max_epochs == 105
    epochs = [round(m * 105) for m in cfg.schedule.milestones]
    assert epochs == [30, 60, 90, 100] and round(cfg.schedule.warmup_fraction * 105) == 5
    task = Jigsaw(
        ResNetEncoder(50, cifar_stem=False),
        image_size=int(cfg.data.image_size),
        cell_size=task_cfg.cell_size,
        tile_size=task_cfg.tile_size,
        num_permutations=10,  # the head's shape, without drawing 2000 permutations here
        tile_dim=task_cfg.tile_dim,
        head_hidden_dims=list(task_cfg.head_hidden_dims),
        permutation_cache=None,
    )
    linear, norm, _ = task.tile_projection
    assert (linear.in_features, linear.out_features, norm.num_features) == (2048, 1000, 1000)
    (classifier,) = task.classifier
    assert (classifier.in_features, classifier.out_features) == (9000, 10)
