"""The files a run leaves in its directory: metrics.json, merged stage by stage, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | os.PathLike[str], section: str, values: Any) -> dict[str, Any]:
    """Set ``metrics[section] = values`` in the run's metrics.json, keeping the other sections."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics(run_dir)
    metrics[section] = values
    tmp = run_dir / f".{METRICS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, run_dir / METRICS_FILE)
    return metrics
