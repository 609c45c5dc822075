"""The default data shipped inside the package: a class-balanced subset of CIFAR-10 as JPEGs.

``cifar10-subset.tar.gz`` holds ``train/<class>/<id>.jpg`` and
``test/<class>/<id>.jpg``, the first images by file name of each class of the CIFAR-10 JPEG mirror
(re-encoded at about quality 75, so accuracies are close to, not equal to, those on the original
pickles). A gzipped tar is three times smaller than a zip here, because gzip compresses the JPEG
headers that all these small files share; it is read into memory once (a few MB). Rebuild it with::

    python -m selfsup.data.embedded ../shared/datasets/cifar10-jpg.tar.gz --train-per-class 2000 --test-per-class 500
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from collections import defaultdict
from importlib import resources
from pathlib import Path

from selfsup.data.sources import ArchiveImages

ARCHIVE_NAME = "cifar10-subset.tar.gz"


def archive_path() -> Path:
    """Where the embedded archive is installed."""
    return Path(str(resources.files("selfsup.data") / "embedded" / ARCHIVE_NAME))


def embedded_cifar10(split: str, labeled: bool) -> ArchiveImages:
    """The embedded CIFAR-10 subset, ``split`` ``train`` or ``test``, with its labels or without."""
    return ArchiveImages(archive_path(), prefix=split, labeled=labeled)


def build_archive(source: Path, out: Path, per_class: dict[str, int]) -> dict[str, int]:
    """Copy the first ``per_class[split]`` images of each class and split from a CIFAR-10 JPEG archive.

    Returns:
        images written per split.
    """
    chosen: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
    with tarfile.open(source) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name
        )
        for m in members:
            parts = Path(m.name).parts[-3:]  # split/class/file, whatever the archive's top folder
            if len(parts) == 3 and parts[0] in per_class and len(chosen[parts[:2]]) < per_class[parts[0]]:
                chosen[parts[:2]].append(m)
        out.parent.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = defaultdict(int)
        # mtime 0 and a fixed gzip header make the archive's bytes reproducible
        with (
            open(out, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as dst,
        ):
            for (split, cls), items in sorted(chosen.items()):
                for m in items:
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    info = tarfile.TarInfo(f"{split}/{cls}/{Path(m.name).name}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    dst.addfile(info, io.BytesIO(data))
                    counts[split] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source", type=Path, help="cifar10-jpg.tar.gz (train/<class>/*.jpg, test/<class>/*.jpg)"
    )
    parser.add_argument("--out", type=Path, default=archive_path())
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--test-per-class", type=int, default=500)
    args = parser.parse_args()
    counts = build_archive(
        args.source, args.out, {"train": args.train_per_class, "test": args.test_per_class}
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {counts}")


if __name__ == "__main__":
    main()
