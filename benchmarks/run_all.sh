#!/usr/bin/env bash
# Run every benchmark in order (each writes benchmarks/results/<name>.json).
# Usage: benchmarks/run_all.sh [quick]   (quick: tiny models only, fewer repeats/seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average before: $load (timings are only fair on a quiet machine)"
if [[ "${1:-}" == quick ]]; then
  $PY benchmarks/kd_step.py --sizes tiny --tiny-repeats 5
  $PY benchmarks/data_loading.py --sizes tiny --clips 20
  $PY benchmarks/kd_gain.py --seeds 0 1 --epochs 3 --teacher-epochs 3
  $PY benchmarks/logit_cache.py --repeats 3
  $PY benchmarks/export_speed.py --sizes tiny --repeats 3
  $PY benchmarks/checkpoint_bytes.py
else
  $PY benchmarks/kd_step.py
  $PY benchmarks/data_loading.py
  $PY benchmarks/kd_gain.py --jobs 2 --threads 1   # two 1-thread trainings on 2 cores
  $PY benchmarks/logit_cache.py
  $PY benchmarks/export_speed.py
  $PY benchmarks/checkpoint_bytes.py
  $PY benchmarks/eval_scale.py --val-per-class 20
fi
