"""Tar shards (the WebDataset format) for data that outgrows one disk or chokes a network file system.

A *shard set* is a folder of ``shard-NNNNNN.tar`` files and an index, ``shards.json``. Each image is
one sample of a shard: members ``<key>.<ext>`` (the bytes as the source held them, under their own
extension; decoded sources are PNG-encoded), ``<key>.cls`` (the class index, when labeled) and
``<key>.src.txt`` (where the image came from, for error messages). ``<key>`` is the image's
zero-padded *global index* in the set, so a shard holds a contiguous range of indices. The index
lists every shard's file, sample count, first index and labels, the total, the classes and the
fingerprint of the source the set was written from. ``selfsup-shard`` writes one from any data config.

Reading and writing the tar format is the ``webdataset`` library's (``ShardWriter``; and
``tariterators.tar_file_expander`` / ``group_by_keys`` to read a shard as a stream of samples).
It reads and writes the standard format that other tools produce and consume; Lightning's
``litdata`` would need its own chunk format. The split of an epoch and the shuffle are written here,
because webdataset's own (``split_by_node``, ``split_by_worker``, ``shuffle``) hand out whole shards
round robin, so ranks get unequal sample counts (DDP hangs on an unequal number of batches) and
``len()`` is unknown, and its shuffle draws as items arrive, so a resumed run cannot skip to a
position without reading everything before it.

The streaming order (:class:`ShardStream`), per epoch ``e`` of a run seeded ``s``, with ``W`` ranks
of ``B`` images per batch and ``K`` loader workers each:

- the shards are concatenated in a permutation seeded ``s + e`` (``EpochSampler``'s seed);
- the stream is cut to ``W * floor(N / (W * B)) * B`` samples (``drop_last``, when the data holds
  at least one global batch; otherwise padded by repeating its start to a multiple of ``W``, as
  ``EpochSampler`` does), so every rank gets the same number of whole batches;
- rank ``r`` takes the ``r``-th contiguous share; worker ``k`` a contiguous share of whole batches
  of it (the first workers one more when they do not divide), and reads only the shards it overlaps,
  skipping the members before and after its share without extracting them;
- a buffer of ``shuffle_buffer`` samples shuffles each worker's share, seeded from
  ``(s, e, r, k)``; the buffer's permutation is drawn before anything is read, so that a resumed
  worker knows which samples it has already handed out and skips them without reading them;
- each sample's key is ``sample_key(s, e, global index)``, so the base augmentation and the pretext
  task draw exactly what the random-access path (``EpochSampler``) draws for that image.

Every image is thus seen exactly once per epoch, except the ``drop_last`` remainder (fewer than
``W * B`` images, a different one each epoch). Unlike ``EpochSampler``, which batch an image lands
in depends on ``W``, ``B`` and ``K``: a resumed run must keep them (:class:`ShardLoader` checks).

:class:`ShardImages` is also an ordinary random-access source (probes, kNN, ``on_device``,
``data.pretrain.stream=false``): each shard's member offsets are read once, on first use, as
:class:`~selfsup.data.sources.ArchiveImages` does for one archive.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from selfsup.atomic import atomic_write_text, temp_path
from selfsup.data.dataset import BadImage, require_policy, sample_item
from selfsup.data.sources import IMAGE_EXTENSIONS, UNLABELED, ImageSource, Sample, encoded
from selfsup.errors import ConfigError, DataError
from selfsup.training.randomness import GOLDEN, mix64, sample_key

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
FORMAT = "selfsup-shards/1"
SHARD_PATTERN = "shard-%06d.tar"
KEY_DIGITS = 9  # zero padding of the keys (sorting by name keeps the order up to a billion images)
IMAGE_FIELDS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
SOURCE_FIELD = "src.txt"
INSTALL_HINT = "pip install 'selfsup[shards]'"


def require_webdataset() -> ModuleType:
    """The ``webdataset`` module, or one clear error saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise DataError(f"tar shards need the webdataset package: {INSTALL_HINT}") from None
    return webdataset


# -- the index -------------------------------------------------------------------------------------
@dataclass
class ShardSet:
    """A shard set's index (``shards.json``).

    Attributes:
        root: the folder.
        files: shard file names, in index order.
        counts: samples per shard.
        firsts: global index of each shard's first sample.
        classes: class names, or None when unlabeled.
        labels: per shard, the class index of each sample (None when unlabeled).
        fingerprint: the fingerprint of the source the set was written from.
    """

    root: Path
    files: list[str]
    counts: list[int]
    firsts: list[int]
    classes: list[str] | None
    labels: list[list[int]] | None
    fingerprint: str

    @property
    def total(self) -> int:
        return sum(self.counts)

    def path(self, shard: int) -> Path:
        return self.root / self.files[shard]

    def shard_of(self, index: int) -> int:
        """The shard holding global index ``index``."""
        return bisect.bisect_right(self.firsts, index) - 1

    def to_dict(self) -> dict[str, Any]:
        shards = [
            {"file": f, "count": c, "first": first, **({"labels": self.labels[i]} if self.labels else {})}
            for i, (f, c, first) in enumerate(zip(self.files, self.counts, self.firsts, strict=True))
        ]
        return {
            "format": FORMAT,
            "total": self.total,
            "classes": self.classes,
            "fingerprint": self.fingerprint,
            "shards": shards,
        }

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> ShardSet:
        """Read ``<root>/shards.json``; a folder without one, or with missing shards, is a DataError."""
        root = Path(root).expanduser()
        index = root / INDEX_FILE
        if not index.is_file():
            what = "does not exist" if not root.exists() else f"has no {INDEX_FILE}"
            raise DataError(f"shard set {root} {what}; write one with selfsup-shard")
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
            shards = doc["shards"]
            labeled = doc["classes"] is not None
            found = cls(
                root=root,
                files=[str(s["file"]) for s in shards],
                counts=[int(s["count"]) for s in shards],
                firsts=[int(s["first"]) for s in shards],
                classes=doc["classes"],
                labels=[list(s["labels"]) for s in shards] if labeled else None,
                fingerprint=str(doc["fingerprint"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{index} is not a selfsup shard index ({type(e).__name__}: {e})") from None
        if doc.get("format") != FORMAT:
            raise DataError(f"{index}: unknown format {doc.get('format')!r} (this selfsup reads {FORMAT})")
        missing = [f for f in found.files if not (root / f).is_file()]
        if missing:
            raise DataError(f"shard set {root}: {len(missing)} shards are missing, e.g. {missing[0]}")
        if not found.total:
            raise DataError(f"shard set {root} holds no images")
        return found


# -- writing ---------------------------------------------------------------------------------------
def write_shards(
    source: ImageSource, out_dir: str | os.PathLike[str], shard_size: int, shuffle_seed: int | None = 0
) -> ShardSet:
    """Write every image of ``source`` as a shard set in ``out_dir``, which must not exist or be empty.

    The set is written to a temporary folder beside ``out_dir`` and renamed into place at the end,
    so a killed writer never leaves a partial set where a reader would take it for a whole one.

    Args:
        source: any image source (labels and classes are kept when it has them).
        out_dir: the shard set's folder.
        shard_size: images per shard (the last one may hold fewer). A few hundred MB per shard suits
            network file systems and object stores: e.g. 1000 for ImageNet-sized JPEGs.
        shuffle_seed: write the images in a random order drawn with this seed (None: the source's
            order). Sources are often sorted by class; shards in that order would each hold one
            class, which no shard-order shuffle and no small buffer can mix back.

    Returns:
        The written set's index.
    """
    wds = require_webdataset()
    out = Path(out_dir).expanduser()
    _require_free(out)
    if shard_size < 1:
        raise DataError(f"shard size must be a positive number of images, got {shard_size}")
    order = (
        torch.randperm(len(source), generator=torch.Generator().manual_seed(shuffle_seed))
        if shuffle_seed is not None
        else torch.arange(len(source))
    )
    tmp = temp_path(out)
    tmp.mkdir(parents=True)
    try:
        files: list[str] = []
        counts: list[int] = []

        def finished(name: str) -> None:
            files.append(Path(name).name)
            counts.append(writer.count)
            log.info("wrote %s (%d images, %d so far)", files[-1], counts[-1], sum(counts))

        # mtime 0: the same images give the same bytes, so a rewritten set can be compared to the old.
        writer = wds.ShardWriter(
            str(tmp / SHARD_PATTERN), maxcount=shard_size, post=finished, verbose=0, mtime=0.0
        )
        labels: list[int] = []
        with writer:
            for position, index in enumerate(order.tolist()):
                sample = source.get(index)
                writer.write(_shard_sample(sample, position, source.labeled))
                labels.append(int(sample.label))
        firsts = [sum(counts[:i]) for i in range(len(counts))]
        index = ShardSet(
            root=out,
            files=files,
            counts=counts,
            firsts=firsts,
            classes=list(source.classes) if source.classes is not None else None,
            labels=[labels[f : f + c] for f, c in zip(firsts, counts, strict=True)]
            if source.labeled
            else None,
            fingerprint=source.fingerprint(),
        )
        atomic_write_text(tmp / INDEX_FILE, json.dumps(index.to_dict(), indent=1) + "\n")
        _require_free(out)
        if out.is_dir():
            out.rmdir()  # empty (checked): the rename needs the name free
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def _require_free(out: Path) -> None:
    """``out`` does not exist or is an empty folder: a shard set is never partly overwritten."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DataError(f"shard folder {out} exists and is not empty; choose another one or delete it first")


def _shard_sample(sample: Sample, position: int, labeled: bool) -> dict[str, Any]:
    """``sample`` as the webdataset sample at global index ``position`` (field -> bytes or text)."""
    data, field = _encoded_image(sample)
    out: dict[str, Any] = {"__key__": f"{position:0{KEY_DIGITS}d}", field: data, SOURCE_FIELD: sample.name}
    if labeled:
        out["cls"] = str(int(sample.label))
    return out


def _encoded_image(sample: Sample) -> tuple[bytes, str]:
    """The image's file bytes and their extension; a decoded (3, H, W) uint8 image is PNG-encoded."""
    if sample.data.ndim == 3:
        from torchvision.io import encode_png

        return encode_png(sample.data.contiguous()).numpy().tobytes(), "png"
    suffix = Path(sample.name).suffix.lower().lstrip(".")
    return sample.data.numpy().tobytes(), suffix if suffix in IMAGE_FIELDS else _sniffed(sample.data)


def _sniffed(data: Tensor) -> str:
    """An image extension from the first bytes (sources whose names carry none); decoding sniffs too."""
    head = data[:12].numpy().tobytes()
    for magic, field in ((b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp")):
        if head.startswith(magic):
            return field
    return "webp" if head[8:12] == b"WEBP" else "jpg"


def shard_command(cfg: DictConfig) -> ShardSet:
    """``selfsup-shard``: write ``data.<shard.split>`` of the composed data config as a shard set.

    The split's source is built as configured, whole: the caps (``data.max_images``) and the
    validation hold-out are choices of a training run, not of the data written.
    """
    from selfsup.config import build, check_complete, check_data_path, require_choice, require_positive_int

    check_complete(cfg)
    split = require_choice(cfg, "shard.split", ("pretrain", "train", "test"))
    size = require_positive_int(cfg, "shard.size")
    seed = cfg.shard.get("shuffle_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("shard.shuffle_seed", f"must be an integer or null, got {seed!r}")
    check_data_path(cfg)
    if cfg.data.get(split) is None:
        raise ConfigError(f"data.{split}", f"is null: this data config has no '{split}' images to write")
    out = Path(str(cfg.shard.out)).expanduser()
    try:
        _require_free(out)
        source = build(f"data.{split}", cfg.data[split])()
    except DataError as e:
        raise ConfigError("shard.out" if out.exists() else f"data.{split}", str(e)) from None
    log.info(
        "writing %d images of data.%s (%s) to %s, %d per shard",
        len(source),
        split,
        cfg.data[split]._target_,
        out,
        size,
    )
    written = write_shards(source, out, size, seed)
    message = f"wrote {written.total} images in {len(written.files)} shards to {out}"
    log.info("%s", message)
    print(message)
    return written


# -- random access ---------------------------------------------------------------------------------
class ShardImages(ImageSource):
    """The images of a shard set, as a source; also what tells the DataModule to stream them.

    Random access (``get``) reads each shard's member offsets once, on its first use, and then one
    image per seek. The pretraining loader streams the set instead (:class:`ShardStream`) when
    ``stream`` is true.

    Args:
        root: the shard set's folder (what ``selfsup-shard`` wrote).
        stream: pretraining reads the shards front to back (sequential reads, shuffled by shard order
            and a buffer); false reads images by random access in ``EpochSampler``'s exact order
            (one seek per image: fine on a local disk).
        shuffle_buffer: samples each streaming worker holds to shuffle; more mixes better and costs
            memory (encoded images: ~100 KB each for ImageNet JPEGs). 1 keeps the shard order.
    """

    def __init__(self, root: str | os.PathLike[str], stream: bool = True, shuffle_buffer: int = 1000) -> None:
        if shuffle_buffer < 1:
            raise ConfigError(
                "data.pretrain.shuffle_buffer", f"must be a positive integer, got {shuffle_buffer}"
            )
        self.shards = ShardSet.load(root)
        self.root = self.shards.root
        self.stream, self.shuffle_buffer = bool(stream), int(shuffle_buffer)
        self.classes = self.shards.classes
        flat = [label for shard in self.shards.labels or [] for label in shard]
        self.labels = torch.tensor(flat) if flat else torch.full((self.shards.total,), UNLABELED)
        self._members: dict[int, dict[int, dict[str, tuple[int, int]]]] = {}
        self._handle: tuple[int, int, Any] | None = None  # (pid, shard, open file)

    def __len__(self) -> int:
        return self.shards.total

    def name(self, index: int) -> str:
        return f"{self.shards.path(self.shards.shard_of(index))}:{index:0{KEY_DIGITS}d}"

    def get(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of a shard set of {len(self)}")
        shard = self.shards.shard_of(index)
        fields = self._index(shard).get(index)
        if fields is None:
            raise DataError(f"shard {self.shards.path(shard)} has no sample {index:0{KEY_DIGITS}d}")
        raw: dict[str, Any] = {field: self._read(shard, span) for field, span in fields.items()}
        raw["__key__"] = f"{index:0{KEY_DIGITS}d}"
        return _sample(raw, self.shards.path(shard))

    def _index(self, shard: int) -> dict[int, dict[str, tuple[int, int]]]:
        """Global index -> field -> (offset, size) of shard ``shard``'s members, read once."""
        if shard not in self._members:
            path = self.shards.path(shard)
            members: dict[int, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(path, mode="r:") as tar:
                    for m in tar.getmembers():
                        if m.isfile():
                            key, _, field = m.name.partition(".")
                            members.setdefault(int(key), {})[field] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError, ValueError) as e:
                raise DataError(f"cannot read shard {path}: {e}") from None
            self._members[shard] = members
        return self._members[shard]

    def _read(self, shard: int, span: tuple[int, int]) -> bytes:
        """The bytes at ``span`` of shard ``shard``; the last shard read stays open (per process)."""
        if self._handle is None or self._handle[:2] != (os.getpid(), shard):
            if self._handle is not None and self._handle[0] == os.getpid():
                self._handle[2].close()
            self._handle = (os.getpid(), shard, open(self.shards.path(shard), "rb"))  # noqa: SIM115
        f = self._handle[2]
        f.seek(span[0])
        return f.read(span[1])

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(self.root).encode())
        digest.update((self.root / INDEX_FILE).read_bytes())
        return digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None  # file handles do not cross process boundaries
        return state


def _sample(raw: dict[str, Any], shard: Path) -> Sample:
    """A webdataset sample (field -> bytes) as a :class:`Sample`; an imageless one gets empty bytes."""
    key = raw["__key__"]
    field = next((f for f in IMAGE_FIELDS if f in raw), None)
    name = f"{shard}:{key}.{field or '<no image>'}"
    if SOURCE_FIELD in raw:
        name += f" (from {bytes(raw[SOURCE_FIELD]).decode('utf-8', 'replace')})"
    label = int(bytes(raw["cls"]).decode()) if "cls" in raw else UNLABELED
    data = encoded(bytes(raw[field])) if field is not None else encoded(b"")
    return Sample(data, label, name)


# -- streaming -------------------------------------------------------------------------------------
def rank_size(total: int, world: int, batch: int) -> int:
    """Samples per rank and epoch: whole batches (``drop_last``) or, below one global batch, padded."""
    if total >= world * batch:
        return total // (world * batch) * batch
    return -(-total // world)


def worker_span(size: int, batch: int, worker: int, workers: int) -> tuple[int, int]:
    """Worker ``worker``'s contiguous share ``[start, stop)`` of a rank's ``size`` samples: whole batches.

    The first ``batches % workers`` workers take one batch more. The DataLoader asks its workers for
    batches round robin, so batch ``t`` of the rank is batch ``t // workers`` of worker ``t % workers``
    (what a resumed :class:`ShardStream` relies on).
    """
    batches = -(-size // batch)
    share, extra = divmod(batches, workers)
    first = worker * share + min(worker, extra)
    count = share + (worker < extra)
    return min(first * batch, size), min((first + count) * batch, size)


def buffer_order(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n,) long: the order in which a shuffle buffer of ``size`` hands out ``n`` streamed items.

    The buffer fills with the first ``size`` items; each further item replaces a uniformly drawn
    one, which is handed out; at the end the rest leave in a random order. Item ``order[t]`` has
    arrived by the time ``t + size`` items have been read, so streaming in this order holds at most
    ``size`` items.
    """
    size = max(1, min(size, n))
    if size == 1:
        return torch.arange(n)
    picks = torch.randint(0, size, (n - size,), generator=generator).tolist()
    buffer, out = list(range(size)), []
    for incoming, pick in zip(range(size, n), picks, strict=True):
        out.append(buffer[pick])
        buffer[pick] = incoming
    out += [buffer[i] for i in torch.randperm(size, generator=generator).tolist()]
    return torch.tensor(out, dtype=torch.long)


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The buffer shuffle's seed for one worker of one rank in one epoch (a 63-bit integer)."""
    key = sample_key(seed, epoch, rank)
    key = mix64(key ^ mix64(torch.tensor(worker + 1, dtype=torch.int64) * GOLDEN))
    return int(key) % (1 << 63)


@dataclass
class Segment:
    """A run of consecutive samples of one shard in a worker's stream.

    Attributes:
        shard: the shard.
        first: global index of the run's first sample.
        count: samples in the run.
        position: the run's first position in the worker's stream.
    """

    shard: int
    first: int
    count: int
    position: int


class ShardStream(IterableDataset):
    """One rank's share of a shard set per epoch, keyed and decoded as :class:`ImageDataset` items.

    Items are what ``ImageDataset`` returns for a keyed sampler: ``{"image": (3, S, S) uint8,
    "label", "index": global index, "key"}``, or a :class:`BadImage` (``on_bad_image="skip"``).

    Args:
        source: the shard set.
        transform: applied to each (3, H, W) uint8 image (a :class:`KeyedAugmentation` draws from the key).
        on_bad_image: ``skip`` or ``error``.
        seed: the run's seed.
        batch_size: images per batch per rank.
        num_replicas: world size.
        rank: this process's rank.
        shuffle_buffer: samples each worker holds to shuffle (1: none).
        decode_here: decode in the workers; False hands out file bytes for the device
            (``data.decode_on_device``, :mod:`selfsup.data.device_decode`).
    """

    def __init__(
        self,
        source: ShardImages,
        transform: Callable[..., Tensor] | None,
        on_bad_image: str,
        *,
        seed: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle_buffer: int = 1000,
        decode_here: bool = True,
    ) -> None:
        require_policy(on_bad_image)
        self.source, self.shards = source, source.shards
        self.transform, self.on_bad_image, self.decode_here = transform, on_bad_image, decode_here
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.num_replicas, self.rank, self.shuffle_buffer = int(num_replicas), int(rank), int(shuffle_buffer)
        self.epoch = 0
        self.resume: tuple[int, int] | None = None  # (epoch, this rank's batches done) for the next iteration
        self.size = rank_size(self.shards.total, self.num_replicas, self.batch_size)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard_order(self, epoch: int) -> Tensor:
        """(num_shards,) long: the epoch's shard order, seeded ``seed + epoch`` as ``EpochSampler``'s."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.shards.files), generator=generator)

    def segments(self, epoch: int, worker: int, workers: int) -> list[Segment]:
        """The runs of shards that make up ``worker``'s stream in ``epoch``, in stream order."""
        start, stop = worker_span(self.size, self.batch_size, worker, workers)
        begin = self.rank * self.size
        order = self.shard_order(epoch).tolist()
        counts = [self.shards.counts[s] for s in order]
        ends = torch.tensor(counts).cumsum(0).tolist()
        total, found, position = self.shards.total, [], 0
        at, remaining = begin + start, stop - start
        while remaining > 0:
            wrapped = at % total  # the padding of data smaller than one global batch repeats the start
            slot = bisect.bisect_right(ends, wrapped)
            offset = wrapped - (ends[slot] - counts[slot])
            count = min(counts[slot] - offset, remaining)
            shard = order[slot]
            found.append(Segment(shard, self.shards.firsts[shard] + offset, count, position))
            at, remaining, position = at + count, remaining - count, position + count
        return found

    def resumed_batches(self) -> int:
        """Batches of this rank's epoch already trained on (a resumed run), else 0."""
        return self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0

    def __iter__(self) -> Iterator[dict[str, Any] | BadImage]:
        """This worker's items of the epoch; after a resume, those of the batches not yet trained on.

        The DataLoader asks worker ``t % K`` for the rank's batch ``t``, counting from the first
        batch it asks for. After ``done`` batches, loader worker ``w`` therefore plays the part of
        worker ``(w + done) % K`` of the uninterrupted epoch, less the batches that one has handed
        out: the resumed loader then yields batch ``done``, ``done + 1``, ... as the uninterrupted
        one would, and a second resume counts from the same layout.
        """
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, done = self.epoch, self.resumed_batches()
        role = (worker + done) % workers
        segments = self.segments(epoch, role, workers)
        indices = (
            torch.cat([torch.arange(s.first, s.first + s.count) for s in segments])
            if segments
            else torch.empty(0, dtype=torch.long)
        )
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, self.rank, role))
        order = buffer_order(len(indices), self.shuffle_buffer, generator)
        handed_out = done // workers + (role < done % workers)
        order = order[handed_out * self.batch_size :]
        keys = sample_key(self.seed, epoch, indices)
        return self._items(segments, order.tolist(), indices, keys)

    def _items(
        self, segments: list[Segment], order: list[int], indices: Tensor, keys: Tensor
    ) -> Iterator[dict[str, Any] | BadImage]:
        """Items at stream positions ``order``, read front to back and held until their turn."""
        wanted = set(order)
        reads = self._read(segments, wanted)
        held: dict[int, dict[str, Any]] = {}
        for position in order:
            while position not in held:
                at, raw = next(reads)
                held[at] = raw
            yield self._item(held.pop(position), int(indices[position]), int(keys[position]))

    def _read(self, segments: list[Segment], wanted: set[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(stream position, webdataset sample) of every wanted position, in stream order."""
        for segment in segments:
            path = self.shards.path(segment.shard)
            last = segment.first + segment.count - 1

            def selected(name: str, segment: Segment = segment) -> bool:
                index = int(name.partition(".")[0])
                offset = index - segment.first
                return 0 <= offset < segment.count and segment.position + offset in wanted

            if not any(segment.position + i in wanted for i in range(segment.count)):
                continue
            for raw in _read_shard(path, selected):
                index = int(raw["__key__"])
                yield segment.position + index - segment.first, raw | {"__shard__": path}
                if index >= last:
                    break

    def _item(self, raw: dict[str, Any], index: int, key: int) -> dict[str, Any] | BadImage:
        """One streamed sample as ``ImageDataset`` makes its items (decoded here or on the device)."""
        sample = _sample(raw, raw["__shard__"])
        return sample_item(sample, index, key, self.transform, self.on_bad_image, self.decode_here)


def _read_shard(path: Path, selected: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """The samples of one shard whose member names pass ``selected``, through webdataset's tar reader.

    Members that are not selected are stepped over without being extracted.
    """
    require_webdataset()
    from webdataset import tariterators

    try:
        with open(path, "rb") as stream:
            files = tariterators.tar_file_expander(
                [{"url": str(path), "stream": stream}], select_files=selected
            )
            yield from tariterators.group_by_keys(files)
    except (tarfile.TarError, OSError, ValueError) as e:
        reason = e.args[0] if e.args else type(e).__name__
        raise DataError(f"cannot read shard {path}: {reason}") from None


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that Lightning checkpoints and restores mid-epoch.

    The same protocol as :class:`~selfsup.data.sampler.ResumableLoader`: ``state_dict`` holds the
    epoch and the samples of it trained on (all ranks together), ``load_state_dict`` makes the next
    iteration skip them. Workers are started afresh every epoch (``persistent_workers`` is off):
    they hold a copy of the stream made when they start, and it must carry the epoch.

    Args:
        dataset: the rank's stream.
        batch_size: images per batch.
        epoch: the epoch about to be iterated (Lightning's loop counter); None: ``set_epoch``'s.
        batches_done: the number of this epoch's batches the training loop has finished (at save
            time); None counts none (outside a Trainer).
        **kwargs: the other ``DataLoader`` arguments (workers, collation, pinning).
    """

    def __init__(
        self,
        dataset: ShardStream,
        *,
        batch_size: int,
        epoch: Callable[[], int] | None = None,
        batches_done: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["persistent_workers"] = False
        super().__init__(dataset, batch_size=batch_size, drop_last=False, **kwargs)
        self.stream, self.epoch, self.batches_done = dataset, epoch, batches_done

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Any:
        if self.epoch is not None and self.stream.resume is None:
            self.stream.set_epoch(self.epoch())
        iterator = super().__iter__()  # workers start here, with the stream's epoch and resume point
        self.stream.resume = None
        return iterator

    def layout(self) -> dict[str, int]:
        """What decides which batch an image lands in, besides the seed and the epoch."""
        return {
            "world_size": self.stream.num_replicas,
            "batch_size": self.stream.batch_size,
            "num_workers": self.num_workers,
        }

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``samples_done`` (all ranks), and the layout they hold for."""
        done = self.batches_done() if self.batches_done is not None else 0
        if done >= len(self):  # the epoch is complete: resume at the start of the next one
            return {"epoch": self.stream.epoch + 1, "samples_done": 0, **self.layout()}
        samples = done * self.stream.batch_size * self.stream.num_replicas
        return {"epoch": self.stream.epoch, "samples_done": samples, **self.layout()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration after ``samples_done`` of epoch ``epoch``.

        Mid-epoch, the batches done were made with a layout (ranks, batch size, workers); another
        layout splits the epoch differently, so resuming with it is refused rather than repeating
        or leaving out images.
        """
        epoch, samples = int(state["epoch"]), int(state["samples_done"])
        if samples:
            saved = {k: int(state[k]) for k in self.layout() if k in state}
            if saved != self.layout():
                raise DataError(
                    f"this checkpoint stopped mid-epoch while streaming shards with {saved}; resume with "
                    f"the same trainer.devices x num_nodes, data.batch_size and data.num_workers "
                    f"(now {self.layout()})"
                )
        per_rank_batch = self.stream.batch_size * self.stream.num_replicas
        self.stream.set_epoch(epoch)
        self.stream.resume = (epoch, samples // per_rank_batch)
