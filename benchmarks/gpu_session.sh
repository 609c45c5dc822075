#!/usr/bin/env bash
# Everything a session with the GPU machine runs, in one call of the device tool (about 8 minutes).
# Prepare here first:   ../shared/tools/device-wheels.sh          (wheels of hydra-core/omegaconf in .whl)
# Then, with the device tool:  carry [".whl"], command "bash benchmarks/gpu_session.sh", timeout_s 540.
# Results land in benchmarks/results/*.jsonl and $OUT/gpu_session.log (fetched back). Each step has
# its own time limit and the results are copied to $OUT after every step, so one step that hangs or
# a call cut at its limit still brings back what the steps before it measured.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/ssl
# The tests start the selfsup-* commands: install them (no dependencies: the image has them).
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
out=${OUT:-/tmp}
log=$out/gpu_session.log

step() {  # step SECONDS COMMAND...: run it under a time limit, log it, keep the results so far
  local limit=$1
  shift
  echo "== $(date +%T) $* (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  echo "== rc $?"
  cp -r benchmarks/results "$out/" 2>/dev/null || true
}

{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  step 120 python3 -m pytest -m gpu tests -q -p no:cacheprovider
  step 40 python3 -m benchmarks.data_path --quick
  step 40 python3 -m benchmarks.data_path --quick --set data.batch_size=512
  step 60 python3 -m benchmarks.data_path --quick --jpeg-size 224 --paths workers device_decode --workers 8 --set data.batch_size=256
  step 150 python3 -m benchmarks.gpu_throughput --quick --set trainer=gpu
  step 90 python3 -m benchmarks.gpu_throughput --quick --configs rotnet_nin rotnet_resnet18 --set trainer=gpu_fast
} 2>&1 | tee "$log"
