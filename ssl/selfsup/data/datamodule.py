"""The LightningDataModule behind every stage: unlabeled images for pretraining, labeled ones downstream.

Each split is a *source factory* from the config (a ``_partial_`` callable returning an
:class:`~selfsup.data.sources.ImageSource`), so any source works for any split. Workers decode and
apply the base augmentation to uint8 tensors; ``on_after_batch_transfer`` normalizes on the device.

The pretraining loader's order and every sample's random key come from the run's seed
(:mod:`selfsup.data.sampler`): the same on any number of processes, and resumable mid-epoch. A
pretraining source that is a shard set to stream (:class:`~selfsup.data.shards.ShardImages`,
``data=shards``) gets a :class:`~selfsup.data.shards.ShardLoader` instead, with the same keys, the
same state protocol, and the items the rest of the pipeline expects.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Subset

from selfsup.data.dataset import ImageDataset, collate
from selfsup.data.device_augment import BatchAugmentation
from selfsup.data.device_decode import DeviceDecoder
from selfsup.data.resident import KeyedIndices, ResidentImages, load_resident
from selfsup.data.sampler import EpochSampler, ResumableLoader
from selfsup.data.shards import ShardImages, ShardLoader, ShardStream
from selfsup.data.sources import ImageSource, SubsetImages
from selfsup.data.subsets import capped_indices, source_labels, stratified_fraction
from selfsup.data.transforms import CROPS, KeyedAugmentation, eval_transform, normalize
from selfsup.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SourceFactory = Callable[[], ImageSource]
LoaderT = TypeVar("LoaderT", ResumableLoader, ShardLoader)
SPLITS = ("pretrain", "train", "val", "test")
CAP_KEYS = {"pretrain": "max_images", "train": "max_train_images", "test": "max_test_images"}


class ImageDataModule(pl.LightningDataModule):
    """Images for pretraining (``pretrain``) and for downstream stages (``train``, ``val``, ``test``).

    ``val`` chooses (the best layer, settings); ``test`` is only reported. Unless a ``val`` source is
    configured, it is a seeded, class-stratified ``val_fraction`` of the labeled ``train`` images,
    which ``train`` then leaves out (:meth:`source`).

    Every argument is keyword-only; those the data yamls set differently (conf/data/) have no default.

    Args:
        pretrain: source of the pretraining images (labels, if any, are ignored).
        train: labeled source for downstream training (probes, fine-tuning), or None.
        test: labeled source for downstream testing, or None.
        val: labeled source for validation; None holds ``val_fraction`` of ``train`` out instead.
        val_fraction: share of each class of ``train`` held out as ``val`` (drawn with
            ``subset_seed``) when no ``val`` source is given; 0 gives no validation split.
        image_size: side of the square crops fed to the encoder.
        batch_size: images per step per device.
        num_workers: decoding processes; 0 decodes in the main process.
        crop_scale: area range of the random resized crop.
        crop_ratio: aspect-ratio range of the random resized crop.
        hflip: random horizontal flips.
        crop: the training crop: ``random_resized`` (``crop_scale``, ``crop_ratio``) or ``padded``
            (torchvision's ``RandomCrop(image_size, padding=crop_padding)`` with zero padding, RotNet's).
        crop_padding: zero padding of every side before a ``padded`` crop.
        mean: per-channel mean in [0, 1] units, subtracted on the device.
        std: per-channel std in [0, 1] units.
        eval_crop_fraction: downstream images are resized to ``image_size / eval_crop_fraction`` and
            centre-cropped to ``image_size``.
        on_bad_image: ``skip`` (count, log and drop unreadable images) or ``error``.
        pin_memory: page-locked host buffers (useful with GPUs; ignored without one).
        persistent_workers: keep workers alive between epochs.
        path: where the data lives (folder, archive or dataset root); the split configs refer to it
            as ``${..path}``, and it is kept here to say where the data came from.
        download: whether torchvision datasets may download (referenced by the split configs).
        seed: the run's seed (``${seed}``): the pretraining order and each sample's random key.
        max_images: at most this many pretraining images (None: all), for quick comparisons.
        max_train_images: at most this many labeled ``train`` images (None: all).
        max_test_images: at most this many labeled ``test`` images (None: all).
        subset_seed: draws the capped subsets (stratified by class where labeled); fixed apart from
            ``seed`` so that runs with different seeds see the same images.
        on_device: pretraining images decoded once, kept on the device and augmented there in batch
            (:mod:`selfsup.data.resident`); the loader then hands out only indices and keys.
        on_device_size: side the images are stored at (None: their own, which must be one size).
        on_device_max_gib: refuse ``on_device`` above this many GiB of uint8 pixels.
        on_device_cache: folder of the decoded copies (None: decode every run; no default: the data
            yamls set ``${paths.cache_dir}/resident``).
        decode_on_device: the pretraining loader's workers read only file bytes; JPEGs are decoded,
            cropped and flipped on the training device (:mod:`selfsup.data.device_decode`), for data
            too large for ``on_device``.
    """

    def __init__(
        self,
        *,
        pretrain: SourceFactory | None,
        train: SourceFactory | None,
        test: SourceFactory | None,
        image_size: int,
        batch_size: int,
        num_workers: int,
        crop_scale: Sequence[float],
        crop_ratio: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        eval_crop_fraction: float,
        pin_memory: bool,
        persistent_workers: bool,
        path: str | None,
        seed: int,
        hflip: bool = True,
        crop: str = "random_resized",
        crop_padding: int = 4,
        on_bad_image: str = "skip",
        download: bool = False,
        val: SourceFactory | None = None,
        val_fraction: float = 0.1,
        max_images: int | None = None,
        max_train_images: int | None = None,
        max_test_images: int | None = None,
        subset_seed: int = 0,
        on_device: bool = False,
        on_device_size: int | None = None,
        on_device_max_gib: float = 16.0,
        on_device_cache: str | None,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__()
        self.factories = {"pretrain": pretrain, "train": train, "val": val, "test": test}
        if not 0 <= val_fraction < 1:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.crop_scale, self.crop_ratio, self.hflip = tuple(crop_scale), tuple(crop_ratio), hflip
        if crop not in CROPS:
            raise ConfigError("data.crop", f"must be one of {list(CROPS)}, got {crop!r}")
        if crop_padding < 0:
            raise ConfigError("data.crop_padding", f"must be >= 0, got {crop_padding}")
        self.crop, self.crop_padding = crop, int(crop_padding)
        self.mean, self.std = tuple(mean), tuple(std)
        self.eval_crop_fraction = eval_crop_fraction
        self.on_bad_image = on_bad_image
        self.pin_memory = pin_memory and torch.cuda.is_available()  # nothing to pin for without a GPU
        self.persistent_workers = persistent_workers and num_workers > 0
        self.path, self.download, self.seed = path, download, int(seed)
        self.caps = {"pretrain": max_images, "train": max_train_images, "test": max_test_images}
        self.subset_seed = int(subset_seed)
        self.on_device, self.on_device_size = bool(on_device), on_device_size
        self.on_device_max_gib, self.on_device_cache = float(on_device_max_gib), on_device_cache
        self._resident: ResidentImages | None = None
        if decode_on_device and on_device:
            raise ConfigError(
                "data.decode_on_device",
                "data.on_device already keeps the decoded images on the device; set one of the two",
            )
        self.decode_on_device = bool(decode_on_device)
        self._device_decoder = DeviceDecoder(self.train_augmentation(), on_bad_image)
        self._batch_augmentation = BatchAugmentation(
            image_size, self.crop_scale, self.crop_ratio, hflip, crop, self.crop_padding
        )  # built once: the on-device path applies it to every batch
        self._sources: dict[str, ImageSource] = {}
        self._train_loader: ResumableLoader | ShardLoader | None = None
        self._resume_position: dict[str, int] | None = None  # from a checkpoint, for the next train loader
        self.bad_images: set[str] = set()

    # -- sources -------------------------------------------------------------------------------
    def has(self, split: str) -> bool:
        if split == "val" and self.factories["val"] is None:
            return self.val_fraction > 0 and self.factories["train"] is not None
        return self.factories[split] is not None

    def source(self, split: str) -> ImageSource:
        """The split's source, built once (scanning folders, reading archive indexes)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._sources:
            if split in ("train", "val") and self.factories["val"] is None and self.val_fraction > 0:
                self._hold_out_val()
            elif split == "val" and not self.has("val"):
                raise DataError("no 'val' data is configured (data.val is null and data.val_fraction is 0)")
            else:
                self._sources[split] = self._opened(split)
        return self._sources[split]

    def _opened(self, split: str) -> ImageSource:
        """The split's own source, capped, and checked to be labeled if downstream stages read it."""
        factory = self.factories[split]
        if factory is None:
            raise DataError(f"no '{split}' data is configured (data.{split} is null)")
        source = self._capped(split, factory())
        if split != "pretrain" and not source.labeled:
            raise DataError(
                f"data.{split} must be labeled for downstream stages, but its source has no classes"
            )
        return source

    def _hold_out_val(self) -> None:
        """``val``: ``val_fraction`` of each class of ``train`` (seeded); ``train``: the rest."""
        full = self._opened("train")
        labels = source_labels(full)
        held = stratified_fraction(labels, self.val_fraction, self.subset_seed)
        # A class with a single image keeps it for training: validation cannot take all of a class.
        alone = torch.bincount(labels[labels >= 0])[labels[held]] < 2
        held = held[~alone]
        rest = torch.ones(len(full), dtype=torch.bool)
        rest[held] = False
        why = f"val_fraction={self.val_fraction}, subset_seed={self.subset_seed}"
        self._sources["val"] = SubsetImages(full, held, f"val: {why}")
        self._sources["train"] = SubsetImages(
            full, torch.nonzero(rest).flatten(), f"train without val: {why}"
        )
        log.info(
            "validation split: %d of %d labeled train images held out (data.val_fraction=%g, stratified, "
            "data.subset_seed=%d)", len(held), len(full), self.val_fraction, self.subset_seed,
        )  # fmt: skip

    def _capped(self, split: str, source: ImageSource) -> ImageSource:
        """``source``, or a seeded subset of at most the split's cap (stratified by class when labeled)."""
        cap = self.caps.get(split)
        if cap is None or cap >= len(source):
            return source
        key = CAP_KEYS[split]
        indices = capped_indices(source_labels(source), int(cap), self.subset_seed)
        log.info(
            "data.%s=%d: %d of %d %s images%s (data.subset_seed=%d)",
            key, cap, len(indices), len(source), split,
            ", stratified by class" if source.labeled else "", self.subset_seed,
        )  # fmt: skip
        return SubsetImages(source, indices, f"{key}={cap}, seed {self.subset_seed}")

    def classes(self) -> list[str]:
        """The class names of the labeled ``train`` and ``test`` splits, which must be the same list.

        Folder sources number classes per split (sorted folder names), so a class missing from one
        split would silently shift every later label; this refuses such data instead.
        """
        train, test = list(self.source("train").classes or []), list(self.source("test").classes or [])
        if train != test:
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            detail = (
                f"only in train: {only_train}, only in test: {only_test}"
                if only_train or only_test
                else "same names in another order"
            )
            raise DataError(
                f"the train and test splits have different classes ({detail}); labels would not match"
            )
        return train

    def input_spec(self) -> dict[str, Any]:
        """What an encoder trained on this data expects; saved next to exported weights."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    # -- loaders -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.source("pretrain")

    def train_dataloader(self) -> ResumableLoader | ShardLoader:
        """The pretraining loader: keyed samples in this rank's share of the epoch's order.

        With ``on_device`` the same sampler feeds a loader of ``(index, key)`` pairs only; the images
        are gathered and augmented on the device in :meth:`on_after_batch_transfer`. A shard set
        with ``stream`` is streamed instead (:meth:`shard_loader`).
        """
        source = None if self.on_device else self.source("pretrain")
        if isinstance(source, ShardImages) and source.stream:
            return self.shard_loader(source)
        dataset: ImageDataset | KeyedIndices
        if self.on_device:
            dataset = KeyedIndices(len(self.resident()))
            settings: dict[str, Any] = dict(num_workers=0, pin_memory=False, persistent_workers=False)
        else:
            dataset = ImageDataset(
                self.source("pretrain"),
                self.train_augmentation(),
                self.on_bad_image,
                not self.decode_on_device,
            )
            settings = self._loader_settings()
        world, rank = self._world_and_rank()
        drop_last = len(dataset) >= self.batch_size * world  # as `loader`: keep a set smaller than a batch
        sampler = EpochSampler(
            len(dataset), seed=self.seed, shuffle=True, drop_last=drop_last, num_replicas=world, rank=rank
        )
        loader = ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            batches_done=self._batches_done,
            **settings,
        )
        return self._started(loader)

    def shard_loader(self, source: ShardImages) -> ShardLoader:
        """The pretraining loader streaming a shard set: this rank's share of whole batches, resumable."""
        world, rank = self._world_and_rank()
        stream = ShardStream(
            source,
            self.train_augmentation(),
            self.on_bad_image,
            seed=self.seed,
            batch_size=self.batch_size,
            num_replicas=world,
            rank=rank,
            shuffle_buffer=source.shuffle_buffer,
            decode_here=not self.decode_on_device,
        )
        kept = len(stream) * world
        log.info(
            "streaming %d images from %d shards in %s: %d per rank per epoch (%d ranks, batches of %d, "
            "data.num_workers=%d), %d left out per epoch (drop_last), shuffle buffer %d",
            len(source), len(source.shards.files), source.root, len(stream), world, self.batch_size,
            self.num_workers, max(len(source) - kept, 0), source.shuffle_buffer,
        )  # fmt: skip
        loader = ShardLoader(
            stream,
            batch_size=self.batch_size,
            epoch=self._epoch if self.trainer is not None else None,
            batches_done=self._batches_done,
            **self._loader_settings(),
        )
        return self._started(loader)

    def _world_and_rank(self) -> tuple[int, int]:
        """(world size, global rank) of the training run; (1, 0) outside a Trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _started(self, loader: LoaderT) -> LoaderT:
        """``loader`` as the current pretraining loader, resumed where a checkpoint left off, if any."""
        if self._resume_position is not None:
            loader.load_state_dict(self._resume_position)
            self._resume_position = None
        self._train_loader = loader
        return loader

    def _epoch(self) -> int:
        """The epoch the training loop is about to run (what Lightning passes samplers' ``set_epoch``)."""
        assert self.trainer is not None
        return int(self.trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """Where the pretraining loader is in its epoch (``ResumableLoader.state_dict``), for checkpoints."""
        return {"pretrain_position": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next pretraining loader where a checkpoint's left off.

        Lightning restores the datamodule before it sets up the model and optimizers, so this reaches
        the loader before its first iterator exists even when the schedule makes Lightning build the
        loader during setup (see :mod:`selfsup.data.sampler`).
        """
        position = state_dict.get("pretrain_position")
        if position is not None:
            self._resume_position = dict(position)

    def _batches_done(self) -> int:
        """Batches of the current epoch the training loop has finished (what a checkpoint resumes after)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # type: ignore[attr-defined]

    def resident(self) -> ResidentImages:
        """The pretraining images decoded once (``on_device``), read from the cache when it has them."""
        if self._resident is None:
            self._resident = load_resident(
                self.source("pretrain"), self.on_device_size, self.on_device_cache, self.on_device_max_gib,
                self.on_bad_image,
            )  # fmt: skip
            self.bad_images.update(self._resident.bad)
        return self._resident

    def train_augmentation(self, rand_augment: Sequence[int] | None = None) -> KeyedAugmentation:
        """The crop and flip of training images (keyed), with RandAugment ``(num_ops, magnitude)`` after."""
        return KeyedAugmentation(
            self.image_size,
            self.crop_scale,
            self.crop_ratio,
            self.hflip,
            self.crop,
            self.crop_padding,
            rand_augment,
        )

    def labeled_dataloader(
        self, split: str, augment: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        """Loader over a labeled split: augmented and shuffled for training, or centre-cropped in order."""
        transform = (
            self.train_augmentation() if augment else eval_transform(self.image_size, self.eval_crop_fraction)
        )
        dataset = ImageDataset(self.source(split), transform, self.on_bad_image)
        return self.loader(dataset, shuffle=augment, drop_last=False, batch_size=batch_size)

    def loader(
        self, dataset: ImageDataset | Subset, shuffle: bool, drop_last: bool, batch_size: int | None = None
    ) -> DataLoader:
        """The one loader rule of every stage: this datamodule's workers, pinning and collation.

        Args:
            dataset: an :class:`ImageDataset` or a subset of one.
            shuffle: reshuffle every epoch.
            drop_last: drop an incomplete last batch, unless the dataset is smaller than one batch
                (then it is kept whole).
            batch_size: images per batch; None: the datamodule's.
        """
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last and len(dataset) >= (batch_size or self.batch_size),
            **self._loader_settings(),
        )

    def _loader_settings(self) -> dict[str, Any]:
        """What every loader of this datamodule shares: workers, collation, pinning."""
        if self.num_workers > 0:
            end_workers_at_exit()
        return dict(
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=worker_init,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    # -- on the device -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalize the uint8 images on the device and note any skipped files.

        An ``on_device`` pretraining batch arrives as indices and keys: its images are gathered from
        the resident copy and augmented in one batched call first.
        """
        if "encoded" in batch:
            self._decode_on_device(batch)
        elif "image" not in batch and self._resident is not None:
            images = self._resident.gather(batch["index"])
            batch["image"] = self._batch_augmentation(images, batch["key"])
        return self.prepare_batch(batch)

    def _decode_on_device(self, batch: dict[str, Any]) -> None:
        """``encoded`` file bytes -> ``image`` crops decoded on the batch's device; unreadable ones dropped."""
        encoded = batch.pop("encoded")
        images, kept, bad = self._device_decoder(encoded, batch["key"].device)
        if bad:
            keep = torch.tensor(kept, dtype=torch.long, device=batch["key"].device)
            for name in ("label", "index", "key"):
                batch[name] = batch[name][keep]
            batch["bad_images"] = [*batch.get("bad_images", []), *bad]
        batch["image"] = images

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """(B, 3, H, W) uint8 ``image`` -> normalized float32, in place of the uint8 one."""
        for name in batch.get("bad_images", ()):
            if name not in self.bad_images:
                self.bad_images.add(name)
                log.warning("unreadable image skipped: %s (%d so far)", name, len(self.bad_images))
        batch["image"] = normalize(batch["image"], self.mean, self.std)
        return batch

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Move a batch from ``labeled_dataloader`` to ``device`` and normalize it (outside a Trainer)."""
        batch = {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }
        return self.prepare_batch(batch)


def worker_init(worker_id: int) -> None:
    """Start of every DataLoader worker: seeded as Lightning seeds workers, deaf to the stop signals.

    Ctrl-C in a terminal and SLURM's preemption send SIGINT / SIGTERM to every process of the job; the
    main process handles them (save a checkpoint after this step, then stop, shutting the workers down),
    so a worker that died on the signal first would only turn a clean stop into a "worker killed"
    crash. A second SIGTERM still ends a worker, as does the main process's exit.
    """
    if int(os.environ.get("PL_SEED_WORKERS", 0)):  # what Lightning adds when worker_init_fn is None
        pl_worker_init_function(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_on_second_sigterm)


def _end_on_second_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_exit_hook_registered = False


def end_workers_at_exit() -> None:
    """Make sure no loader worker outlives the interpreter's exit (registered once, in the main process).

    A worker ignores its first SIGTERM (:func:`worker_init`), and at exit ``multiprocessing``
    terminates its daemonic children once and then joins them: a loader iterator still alive then
    (a script that stops mid-epoch) would make the process wait for ever. This hook, run before
    ``multiprocessing``'s own (atexit runs the last registered first), kills the daemonic children,
    which are about to be terminated anyway. Two SIGTERMs would not do: sent back to back, the
    second can merge into the first before the worker's handler has run. (A finished or torn-down
    loader has shut its workers down already; this only ends those of a loader still running.)
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_daemonic_children)
        _exit_hook_registered = True


def _kill_daemonic_children() -> None:
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    # torch's SIGCHLD handler would report each killed worker as a failure: we are exiting anyway.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=5)
