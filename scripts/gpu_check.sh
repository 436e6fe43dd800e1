#!/usr/bin/env bash
# One command for any machine with an NVIDIA GPU: checks the torch CUDA path, the NVML
# meter, calibrates the card and runs the GPU baseline suite (workloads/suites/h100.yaml),
# printing tok/s, % of the roofline and J/token. Runs straight from the source tree with
# the Python packages already there (torch, pyyaml, pandas, psutil, rich, nvidia-ml-py):
# no install step, no network. About 6 minutes on an H100.
#
#   scripts/gpu_check.sh [OUTPUT_DIR] [SUITE]      (defaults: results, h100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${1:-results}
SUITE=${2:-h100}
mkdir -p "$OUT"

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv || true
$PY -m harness env

echo "== correctness: CUDA graph decode vs eager vs the fp32 reference (tiny model)"
$PY scripts/gpu_correctness.py

echo "== NVML meter: counter vs sampled power, update rate, idle watts"
$PY scripts/nvml_check.py || echo "NVML check FAILED (energy figures below may be unavailable)"

echo "== calibration"
$PY -m harness calibrate --device cuda --output "$OUT"

echo "== suite $SUITE"
$PY -m harness run "$SUITE" --output "$OUT" --name "gpu-check-$(date +%Y%m%d-%H%M%S)"
