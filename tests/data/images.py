"""Image files for tests: real JPEGs from numpy, 16-bit PNGs, and the broken files users meet."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a 16-bit PNG (``pixels``: (H, W) grayscale or (H, W, 3) RGB, uint16) with a tiny encoder.

    PIL writes 16-bit grayscale but not 16-bit RGB, so the PNG chunks are written here by hand.
    """
    pixels = np.asarray(pixels, dtype=">u2")  # PNG stores samples big-endian
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def jpeg(path: Path, seed: int, size: int = 40) -> Path:
    """A random RGB JPEG."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def image_folder(root: Path, good: int = 6) -> dict[str, list[Path]]:
    """A folder of ``good`` JPEGs, two 16-bit PNGs (valid) and three files that cannot be decoded.

    Returns:
        ``{"good": [...], "bad": [...]}``: which files must load and which must be listed as bad.
    """
    root.mkdir(parents=True, exist_ok=True)
    files = [jpeg(root / f"img{i}.jpg", i) for i in range(good)]
    gray = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    files.append(png16(root / "gray16.png", gray))
    files.append(png16(root / "rgb16.png", np.stack([gray, gray // 2, 65535 - gray], axis=-1)))
    zero = root / "zero.jpg"
    zero.write_bytes(b"")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(files[0].read_bytes()[:200])
    text = root / "notes.png"
    text.write_text("not an image\n")
    return {"good": files, "bad": [zero, truncated, text]}
