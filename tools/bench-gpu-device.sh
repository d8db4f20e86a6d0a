#!/usr/bin/env bash
# make bench-gpu on a borrowed GPU machine that has torch, transformers and accelerate but not
# this project's other dependencies: the wheels carried in .whl/ (tools/gpu-wheels.sh fetches
# them, cp312, at the versions the virtualenv here runs) go to a
# private site directory, then the speed stage and the start-up stage run in one call, each
# inside its own budget (250 s and 280 s: the start-up stage writes the 46 GB model first)
# so the pair ends before a 10-minute command limit.
# Results land in $OUT (bench_gpu.md/.json, bench_startup.md/.json).
set -uo pipefail
GPU_BUDGET_S=${GPU_BUDGET_S:-250}
STARTUP_BUDGET_S=${STARTUP_BUDGET_S:-280}
SITE=${SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m predictor.dev.bench_gpu --budget-s "$GPU_BUDGET_S" "$@"
gpu_rc=$?
python3 -m predictor.dev.bench_startup --budget-s "$STARTUP_BUDGET_S"
startup_rc=$?
exit $((gpu_rc || startup_rc))
