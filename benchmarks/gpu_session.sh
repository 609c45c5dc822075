#!/usr/bin/env bash
# Everything a session with the GPU machine runs, in one call of the device tool (about 6 minutes).
# Prepare here first:   ../shared/tools/device-wheels.sh          (wheels of hydra-core/omegaconf in .whl)
# Then, with the device tool:  carry [".whl"], command "bash benchmarks/gpu_session.sh", timeout_s 540.
# Results land in benchmarks/results/*.jsonl and $OUT/gpu_session.log (fetched back).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/ssl
# The tests start the selfsup-* commands: install them (no dependencies: the image has them).
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
log=${OUT:-/tmp}/gpu_session.log
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -m pytest -m gpu tests -q -p no:cacheprovider
  python3 -m benchmarks.data_path --quick
  python3 -m benchmarks.data_path --quick --set data.batch_size=512
  python3 -m benchmarks.data_path --quick --jpeg-size 224 --paths workers device_decode --workers 8 --set data.batch_size=256
  python3 -m benchmarks.gpu_throughput --quick --set trainer=gpu
  python3 -m benchmarks.gpu_throughput --quick --configs rotnet_nin rotnet_resnet18 --set trainer=gpu_fast
} 2>&1 | tee "$log"
cp -r benchmarks/results "${OUT:-/tmp}/" 2>/dev/null || true
