#!/usr/bin/env bash
# Everything a session with the GPU machine runs, in one call of the device tool (at most 9 minutes).
# Prepare here first:   ../shared/tools/device-wheels.sh          (wheels of hydra-core/omegaconf in .whl)
# Then, with the device tool:  carry [".whl"], command "bash benchmarks/gpu_session.sh", timeout_s 540.
# Results land in benchmarks/results/*.jsonl and $OUT/gpu_session.log (fetched back). Each step has
# its own time limit (together 455 s, plus at most 5 s each to kill one that overran, plus the
# installs) and the results are copied to $OUT after every step, so one step that hangs or a call
# cut at its limit still brings back what the steps before it measured. Exits 1 if any step failed.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/ssl
# The tests start the selfsup-* commands: install them (no dependencies: the image has them).
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
out=${OUT:-/tmp}
log=$out/gpu_session.log
failed=0

step() {  # step SECONDS COMMAND...: run it under a time limit, log it, keep the results so far
  local limit=$1 rc
  shift
  echo "== $(date +%T) $* (limit ${limit} s)"
  timeout --kill-after=5 "$limit" "$@"
  rc=$?
  echo "== rc $rc$([[ $rc -eq 124 || $rc -eq 137 ]] && echo ' (stopped at its time limit)')"
  [[ $rc -eq 0 ]] || failed=1
  cp -r benchmarks/results "$out/" 2>/dev/null || true
}

steps() {
  step 10 nvidia-smi --query-gpu=name,memory.total --format=csv
  step 110 python3 -m pytest -m gpu tests -q -p no:cacheprovider
  step 35 python3 -m benchmarks.data_path --quick
  step 35 python3 -m benchmarks.data_path --quick --set data.batch_size=512
  step 55 python3 -m benchmarks.data_path --quick --jpeg-size 224 --paths workers device_decode --workers 8 --set data.batch_size=256
  step 130 python3 -m benchmarks.gpu_throughput --quick --set trainer=gpu
  step 80 python3 -m benchmarks.gpu_throughput --quick --configs rotnet_nin rotnet_resnet18 --set trainer=gpu_fast
  return $failed
}

# The steps run in this shell (not in a pipeline's subshell), so that their status is kept.
steps > >(tee "$log") 2>&1
status=$?
wait
exit $status
