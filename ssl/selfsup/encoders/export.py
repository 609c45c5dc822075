"""Save an encoder as safetensors plus a small yaml, and rebuild it without any task code.

An export is a folder::

    encoder.safetensors   the encoder's weights (state dict, buffers included)
    encoder.yaml          {encoder: <constructor config with _target_>, input: {...}, meta: {...}}

``input`` records what the encoder expects (image size, normalization mean and std) so that
downstream stages preprocess exactly as pretraining did; ``meta`` says where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from selfsup.atomic import atomic_write, atomic_write_text
from selfsup.encoders.base import Encoder
from selfsup.errors import DataError, NonFiniteError

WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.yaml"
FORMAT_VERSION = 1


def save(
    encoder: Encoder,
    directory: str | os.PathLike[str],
    input_spec: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``encoder`` to ``directory`` (created if needed); each file is replaced atomically.

    Args:
        encoder: the encoder to save; its ``config`` must rebuild it.
        directory: the export folder.
        input_spec: what inputs the encoder expects, e.g. ``{"image_size": 32, "mean": [...], "std": [...]}``.
        meta: provenance, e.g. the task and the number of pretraining steps.

    Returns:
        The export folder.
    """
    directory = Path(directory)
    # safetensors refuses tensors that share memory or are not contiguous.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    broken = _non_finite(state)
    if broken:
        raise NonFiniteError(
            f"refusing to export a non-finite encoder to {directory}: {len(broken)} tensors hold NaN or "
            f"inf (first: {broken[0]})"
        )
    directory.mkdir(parents=True, exist_ok=True)
    # Temporary names are per process: DDP ranks (or two jobs) saving the same export never collide.
    metadata = {"format_version": str(FORMAT_VERSION)}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    doc = {
        "format_version": FORMAT_VERSION,
        "encoder": dict(encoder.config),
        "input": dict(input_spec or {}),
        "meta": dict(meta or {}),
        "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
    }
    atomic_write_text(directory / CONFIG_FILE, yaml.safe_dump(doc, sort_keys=False))
    return directory


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The yaml document of an export (``path`` is the folder or its ``encoder.yaml``)."""
    config_path = _export_dir(path) / CONFIG_FILE
    if not config_path.is_file():
        raise DataError(f"no exported encoder at {path}: expected {config_path}")
    doc = yaml.safe_load(config_path.read_text())
    if not isinstance(doc, dict) or "encoder" not in doc:
        raise DataError(f"{config_path} is not an encoder export (no 'encoder' key)")
    return doc


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Encoder:
    """Rebuild an exported encoder and load its weights.

    Args:
        path: the export folder (or its ``encoder.yaml`` / ``encoder.safetensors``).
        map_location: device for the weights.

    Returns:
        The encoder in eval mode.

    Example:
        >>> enc = selfsup.encoders.load("outputs/2026-11-21/12-00-00/encoder")
        >>> feats = enc(images)  # (B, enc.out_dim)
    """
    directory = _export_dir(path)
    doc = read_spec(directory)
    encoder = instantiate(doc["encoder"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"exported encoder at {directory} has no {WEIGHTS_FILE}")
    recorded = doc.get("weights_sha256")
    if recorded is not None and file_sha256(weights) != recorded:
        raise DataError(
            f"{weights} does not match the weights_sha256 in {directory / CONFIG_FILE}: the weights were "
            "changed or only partly written; export the encoder again"
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as e:  # safetensors' own error for a truncated or foreign file
        raise DataError(f"cannot read {weights}: {e}") from None
    broken = _non_finite(state)
    if broken:
        raise NonFiniteError(f"exported encoder at {directory} holds NaN or inf weights (first: {broken[0]})")
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(
            f"{weights} does not fit the encoder in {CONFIG_FILE}: {str(e).splitlines()[0]}"
        ) from None
    return encoder.eval()


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def identity(path: str | os.PathLike[str]) -> str:
    """What the features of an export depend on: its weights file's bytes and its architecture config.

    Hashes the weights file itself rather than trusting the ``weights_sha256`` recorded in the yaml
    (a weights file replaced by hand, or an interrupted save, must not match), and includes the
    constructor config because options such as a ViT's ``pool`` change the features, not the weights.
    """
    directory = _export_dir(path)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"exported encoder at {directory} has no {WEIGHTS_FILE}")
    architecture = json.dumps(read_spec(directory)["encoder"], sort_keys=True, default=str)
    return hashlib.sha256(f"{file_sha256(weights)}|{architecture}".encode()).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (identifies an export's weights, e.g. for feature caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _export_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) else path
