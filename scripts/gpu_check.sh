#!/usr/bin/env bash
# One command for any machine with an NVIDIA GPU: checks the torch CUDA path (bf16, int8 and
# FP8 weights), the NVML meter, calibrates the card, runs the GPU suite
# (workloads/suites/gpu.yaml; `h100` is an alias) and then a bare loop of the same decode
# steps in the same call, so the harness's overhead is printed as a ratio. Prints tok/s, %
# of the roofline and J/token. Runs straight from the source tree with the Python packages
# already there (torch, pyyaml, pandas, psutil, numpy, rich, safetensors, nvidia-ml-py): no
# install step, no network. It first lists every missing import and stops, before any
# device time is spent on a run that would fail halfway.
#
#   scripts/gpu_check.sh [OUTPUT_DIR] [SUITE]      (defaults: results, gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${1:-results}
SUITE=${2:-gpu}
NAME="gpu-check-$(date +%Y%m%d-%H%M%S)"

echo "== imports"
# module name -> the package that provides it (nvidia-ml-py installs `pynvml`)
$PY - <<'EOF'
import importlib, sys
need = {"torch": "torch", "yaml": "pyyaml", "pandas": "pandas", "psutil": "psutil", "numpy": "numpy",
        "rich": "rich", "safetensors": "safetensors", "pynvml": "nvidia-ml-py"}
missing = []
for mod, pkg in need.items():
    try:
        importlib.import_module(mod)
    except Exception as e:  # an ImportError, or a package broken on import
        missing.append(f"{pkg} (import {mod}: {type(e).__name__}: {e})")
if missing:
    print("missing Python packages, install them first:\n  " + "\n  ".join(missing))
    sys.exit(1)
import torch
print(f"all imports present; torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv || true
$PY -m harness env

echo "== correctness: CUDA graph decode vs eager vs the fp32 reference (tiny model; bf16, int8, fp8)"
$PY scripts/gpu_correctness.py

echo "== NVML meter: counter vs sampled power, update rate, idle watts"
$PY scripts/nvml_check.py || echo "NVML check FAILED (energy figures below may be unavailable)"

echo "== calibration"
$PY -m harness calibrate --device cuda --output "$OUT"

# A lent GPU machine runs one command for at most 10 minutes: the suite gets a budget
# (SUITE_BUDGET_S, default 330 s) and is then stopped with SIGTERM, which keeps every
# finished cell; `harness run --resume DIR` in a later call runs the rest.
echo "== suite $SUITE (budget ${SUITE_BUDGET_S:-330} s)"
status=0
timeout -s TERM "${SUITE_BUDGET_S:-330}" $PY -m harness run "$SUITE" --output "$OUT" --name "$NAME" || status=$?
if [ "$status" = 124 ] || [ "$status" = 130 ]; then
    echo "suite stopped at its budget: finished cells are saved; the rest: $PY -m harness run --resume $OUT/$NAME"
fi

echo "== bare decode loops vs the harness (same backend options, same shapes)"
$PY scripts/gpu_correctness.py --bare "$OUT/$NAME"
exit $status
