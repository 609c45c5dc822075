"""Tar shards: written from any source, read back as written, streamed once per epoch without overlap.

The streaming checks run real DataLoader workers over real JPEG shards; one test runs the real
``selfsup-pretrain`` on 2 gloo processes and reads back which images every step of every rank saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from selfsup.data.dataset import BadImage, collate
from selfsup.data.decode import decode
from selfsup.data.shards import (
    INDEX_FILE,
    ShardImages,
    ShardLoader,
    ShardStream,
    buffer_order,
    write_shards,
)
from selfsup.data.sources import ArrayImages, FolderImages
from selfsup.data.transforms import KeyedAugmentation
from selfsup.errors import DataError, UnreadableImageError
from selfsup.training.randomness import sample_key
from tests.conftest import REPO
from tests.data.images import jpeg
from tests.data.seen import read_seen
from tests.training.commands import BIN, pretrain


def labeled_folder(root: Path, per_class: int = 12, classes: int = 2, size: int = 16) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            jpeg(root / f"class{c}" / f"{i:03d}.jpg", seed=100 * c + i, size=size)
    return root


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[FolderImages, ShardImages]:
    """24 labeled JPEGs in 5 shards (5, 5, 5, 5, 4 images)."""
    folder = labeled_folder(tmp_path_factory.mktemp("images") / "images")
    source = FolderImages(folder, labeled=True)
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(source, out, 5)
    return source, ShardImages(out)


def stream(
    shards: ShardImages, rank: int = 0, world: int = 1, batch: int = 3, buffer: int = 4
) -> ShardStream:
    return ShardStream(
        shards, None, "skip", seed=0, batch_size=batch, num_replicas=world, rank=rank, shuffle_buffer=buffer
    )


def loader(data: ShardStream, workers: int) -> ShardLoader:
    return ShardLoader(data, batch_size=data.batch_size, num_workers=workers, collate_fn=collate)


def batches(data: ShardStream, workers: int, epoch: int = 0) -> list[list[int]]:
    """The global indices of every batch of one epoch of ``data``'s loader."""
    load = loader(data, workers)
    load.set_epoch(epoch)
    found = [batch["index"].tolist() for batch in load]
    assert len(found) == len(load), "len() of the loader is what it yields"
    return found


def test_round_trip(shard_set: tuple[FolderImages, ShardImages]) -> None:
    source, shards = shard_set
    index = json.loads((shards.root / INDEX_FILE).read_text())
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 5, 4]
    assert [s["first"] for s in index["shards"]] == [0, 5, 10, 15, 20]
    assert index["total"] == len(shards) == len(source) == 24
    assert index["classes"] == shards.classes == ["class0", "class1"]
    assert index["fingerprint"] == source.fingerprint()
    by_origin = {}
    for i in range(len(shards)):
        sample = shards.get(i)
        origin = sample.name.rpartition("(from ")[2].rstrip(")")
        by_origin[origin] = sample
        assert int(shards.labels[i]) == sample.label
    assert sorted(by_origin) == sorted(source.files), "every image once, and named by where it came from"
    for i, path in enumerate(source.files):
        assert torch.equal(by_origin[path].data, source.get(i).data), "the file's bytes, unchanged"
        assert by_origin[path].label == source.labels[i]
    with tarfile.open(shards.root / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000.cls", "000000000.jpg", "000000000.src.txt"], "webdataset's layout"
    assert Counter(source.labels) == Counter(shards.labels.tolist())


def test_decoded_sources_are_written_as_png(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (3, 3, 8, 10), dtype=torch.uint8)
    write_shards(ArrayImages(images, [0, 1, 0], ["a", "b"], "arrays"), tmp_path / "set", 2, shuffle_seed=None)
    shards = ShardImages(tmp_path / "set")
    for i in range(3):
        assert shards.get(i).name.split(" ")[0].endswith(".png")
        assert torch.equal(decode(shards.get(i).data, "x"), images[i]), "PNG is lossless"
    assert shards.labels.tolist() == [0, 1, 0]


def test_an_existing_shard_set_is_never_overwritten(shard_set, tmp_path: Path) -> None:
    source, shards = shard_set
    before = {p.name: p.stat().st_mtime_ns for p in shards.root.iterdir()}
    with pytest.raises(DataError, match=r"exists and is not empty"):
        write_shards(source, shards.root, 5)
    assert {p.name: p.stat().st_mtime_ns for p in shards.root.iterdir()} == before
    assert not [p for p in shards.root.parent.iterdir() if p.name.startswith(".")], "no temp folder left"
    with pytest.raises(DataError, match=r"has no shards.json; write one with selfsup-shard"):
        ShardImages(tmp_path)


def test_a_corrupt_jpeg_in_a_shard_is_skipped_with_its_name(tmp_path: Path) -> None:
    folder = labeled_folder(tmp_path / "images", per_class=4, classes=1)
    broken = folder / "class0" / "001.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    write_shards(FolderImages(folder, labeled=False), tmp_path / "set", 3)
    shards = ShardImages(tmp_path / "set")
    items = list(stream(shards, batch=2))
    bad = [item for item in items if isinstance(item, BadImage)]
    assert len(items) == 4 and len(bad) == 1
    assert str(broken) in bad[0].name and "shard-" in bad[0].name, bad[0].name
    strict = ShardStream(shards, None, "error", seed=0, batch_size=2, shuffle_buffer=4)
    with pytest.raises(UnreadableImageError, match=r"shard-00000\d\.tar:0+\d\.jpg \(from .*001\.jpg\)"):
        list(strict)


def test_two_ranks_by_two_workers_see_every_image_once(shard_set) -> None:
    _, shards = shard_set
    seen: list[int] = []
    for rank in range(2):
        found = batches(stream(shards, rank, world=2), workers=2)
        assert len(found) == 4 and all(len(b) == 3 for b in found), (
            "whole batches, the same count on each rank"
        )
        seen += [i for b in found for i in b]
    assert sorted(seen) == list(range(24))


def test_the_remainder_is_left_out_and_nothing_repeats(shard_set) -> None:
    _, shards = shard_set
    seen = [i for rank in range(2) for b in batches(stream(shards, rank, 2, batch=5), 2) for i in b]
    assert len(seen) == len(set(seen)) == 20, "24 images, global batch 10: two batches per rank, 4 left out"


def test_another_epoch_another_order_and_keys_from_the_global_index(shard_set) -> None:
    _, shards = shard_set
    data = stream(shards, buffer=6)
    first, second = batches(data, 0, epoch=0), batches(data, 0, epoch=1)
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b) == list(range(24))
    assert first != second
    assert batches(data, 0, epoch=1) == second, "an epoch's order is a function of the seed and epoch"
    data.set_epoch(1)
    for item in data:
        assert not isinstance(item, BadImage)
        assert item["key"] == int(sample_key(0, 1, item["index"]))


def test_the_base_augmentation_draws_from_the_sample_key(shard_set) -> None:
    _, shards = shard_set
    augment = KeyedAugmentation(8)
    data = ShardStream(shards, augment, "skip", seed=3, batch_size=4, shuffle_buffer=5)
    for item in data:
        expected = augment(decode(shards.get(item["index"]).data, "x"), sample_key(3, 0, item["index"]))
        assert torch.equal(item["image"], expected), "what the random-access path gives the same image"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("done", [1, 3])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(shard_set, workers: int, done: int) -> None:
    _, shards = shard_set
    world, batch = 2, 2  # 6 batches per rank
    for rank in range(world):
        full = batches(stream(shards, rank, world, batch), workers, epoch=1)
        resumed = loader(stream(shards, rank, world, batch), workers)
        resumed.load_state_dict(
            {"epoch": 1, "samples_done": done * batch * world, "world_size": world, "batch_size": batch,
             "num_workers": workers}
        )  # fmt: skip
        rest = [b["index"].tolist() for b in resumed]
        assert rest == full[done:], "the batches an uninterrupted epoch goes on with, in its order"
        again = loader(stream(shards, rank, world, batch), workers)
        again.load_state_dict({"epoch": 1, "samples_done": (done + 1) * batch * world, **again.layout()})
        assert [b["index"].tolist() for b in again] == full[done + 1 :], "a second resume counts the same"
        assert [b["index"].tolist() for b in resumed] == full, "after the resumed epoch, whole epochs again"


def test_resuming_with_another_layout_is_refused(shard_set) -> None:
    _, shards = shard_set
    load = loader(stream(shards, 0, 1, 2), 0)
    with pytest.raises(DataError, match=r"same trainer.devices.*data.num_workers"):
        load.load_state_dict(
            {"epoch": 0, "samples_done": 4, "world_size": 2, "batch_size": 2, "num_workers": 0}
        )


def test_buffer_order_is_a_permutation_within_reach_of_the_buffer() -> None:
    order = buffer_order(100, 10, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(100))
    assert all(position < t + 10 for t, position in enumerate(order.tolist()))
    assert buffer_order(5, 1, torch.Generator()).tolist() == list(range(5))


def test_the_shard_command_writes_a_set_from_a_folder(tmp_path: Path) -> None:
    folder = labeled_folder(tmp_path / "images", per_class=8, classes=1)
    out = tmp_path / "set"
    args = [
        str(BIN / "selfsup-shard"),
        "data=folder",
        f"data.path={folder}",
        f"shard.out={out}",
        "shard.size=3",
    ]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 8 images in 3 shards" in result.stdout
    assert len(ShardImages(out)) == 8
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "error: config key 'shard.out'" in again.stderr
    assert "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_pretraining_streams_shards_with_workers(shard_set, tmp_path: Path) -> None:
    _, shards = shard_set
    overrides = [*SMALL, f"data.path={shards.root}", "data.num_workers=1", "trainer.max_epochs=2"]
    pretrain(tmp_path, overrides, run_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pretrain"]["steps"] == 12 and metrics["pretrain"]["epochs"] == 2


SMALL = [
    "data=shards",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "task=rotnet",
    "encoder=resnet18",
    "encoder.cifar_stem=false",
    "callbacks.periodic_checkpoint=null",
    "threads=1",
]


def test_two_processes_see_every_image_once_per_epoch(tmp_path: Path) -> None:
    """The real ``selfsup-pretrain`` on 2 gloo processes, 2 epochs; a callback records every batch."""
    folder = labeled_folder(tmp_path / "images", per_class=12, classes=2, size=32)
    write_shards(FolderImages(folder, labeled=False), tmp_path / "set", 5)
    seen_dir = tmp_path / "seen"
    overrides = [
        *SMALL,
        f"data.path={tmp_path / 'set'}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=2",
        "+callbacks.seen._target_=tests.data.seen.SeenIndices",
        f"+callbacks.seen.folder={seen_dir}",
    ]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    pretrain(tmp_path, overrides, run_dir=tmp_path / "run", env=env)
    seen = read_seen(seen_dir)
    orders = []
    for epoch in range(2):
        steps = [b for b in seen if b["epoch"] == epoch]
        assert Counter(b["rank"] for b in steps) == {0: 3, 1: 3}, "24 images, 2 x 4 per step: 3 steps each"
        indices = [i for b in steps for i in b["index"]]
        assert sorted(indices) == list(range(24)), f"epoch {epoch}: every image exactly once"
        orders.append([b["index"] for b in steps if b["rank"] == 0])
    assert orders[0] != orders[1], "a new order every epoch"


def test_a_missing_webdataset_is_one_line_saying_what_to_install(monkeypatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r"pip install 'selfsup\[shards\]'"):
        write_shards(
            ArrayImages(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [0], None, "x"), tmp_path / "s", 1
        )


def test_the_datamodule_streams_a_shard_set_or_reads_it_by_random_access(shard_set) -> None:
    from functools import partial

    from selfsup.data.sampler import ResumableLoader
    from tests.conftest import test_datamodule

    _, shards = shard_set
    for stream_it, kind in ((True, ShardLoader), (False, ResumableLoader)):
        dm = test_datamodule(
            pretrain=partial(ShardImages, shards.root, stream=stream_it),
            train=partial(ShardImages, shards.root),
            batch_size=4,
            image_size=8,
        )
        load = dm.train_dataloader()
        assert isinstance(load, kind)
        found = [batch for batch in load]
        assert len(found) == 6 and found[0]["image"].shape == (4, 3, 8, 8)
        assert sorted(i for b in found for i in b["index"].tolist()) == list(range(24))
        assert dm.state_dict()["pretrain_position"]["epoch"] == 0
    assert dm.source("train").labeled and len(dm.labeled_dataloader("train").dataset) == 24
