"""How long a linear probe takes from cached features versus from images.

From images: extract the frozen features of the train and test splits (the encoder's forward passes),
then train the probes. From the cache: read the same features back, then train the same probes.
Both run the probe stage itself (``selfsup.stages.probe.evaluate_frozen``) on an exported encoder.

    python -m benchmarks.probe_speed --encoder outputs/runs/<run>/encoder \\
        --set data=imagefolder data.path=$HOME/.cache/selfsup/cifar10-jpg data.image_size=32
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import compose_cfg, record
from selfsup.eval.results import FrozenEval
from selfsup.stages.components import build_datamodule, setup_runtime
from selfsup.stages.probe import evaluate_frozen


def timed_probe(overrides: list[str], encoder: Path, cache_dir: Path) -> tuple[float, FrozenEval]:
    cfg = compose_cfg([*overrides, f"paths.cache_dir={cache_dir}"], config_name="probe")
    setup_runtime(cfg)
    datamodule = build_datamodule(cfg, ["train", "test"])
    started = time.perf_counter()
    results, _ = evaluate_frozen({"encoder": encoder}, datamodule, cfg.eval, cfg.paths.cache_dir)
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--encoder", type=Path, required=True, help="an export folder (encoder.yaml + encoder.safetensors)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="Hydra overrides of conf/probe.yaml")
    args = parser.parse_args()
    overrides = ["eval=linear", *args.set]
    cache = Path(tempfile.mkdtemp(prefix="selfsup-probe-bench-"))
    try:
        from_images, results = timed_probe(overrides, args.encoder, cache)
        from_cache, again = timed_probe(overrides, args.encoder, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    timing = results.timing
    assert results.probe is not None, "eval=linear runs the linear probe"
    probed = results.probe.encoders["encoder"].layers
    result = {
        "encoder": str(args.encoder),
        "overrides": overrides,
        "from_images_s": round(from_images, 2),
        "from_cache_s": round(from_cache, 2),
        "extract_s": timing["encoder_features_s"],
        "read_cache_s": again.timing["encoder_features_s"],
        "probe_s": timing["encoder_probes_s"],
        "layers": list(probed),
        "top1": {layer: result.top1.mean for layer, result in probed.items()},
    }
    path = record("probe_speed", result)
    print(
        f"from images {from_images:.1f} s (extraction {result['extract_s']:.1f} s), from the cache {from_cache:.1f} s "
        f"(reading {result['read_cache_s']:.2f} s); probes {result['probe_s']:.1f} s -> {path}"
    )


if __name__ == "__main__":
    main()
