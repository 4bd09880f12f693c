#!/usr/bin/env bash
# GPU check (issue 13): 20 bf16 training steps of a wan_small-class model at 128x192 on CUDA + a 49-frame rollout,
# finite outputs, seconds and peak GPU memory of each (benchmarks/gpu_check.py). Without CUDA: prints "no CUDA"
# and exits 0. Usage: bash benchmarks/gpu_check.sh [--device cuda:N] [--steps 20] [--out runs/gpu_check]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA: $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo 'torch missing') sees no CUDA device; skipping the GPU check"
    exit 0
fi
exec "$PY" benchmarks/gpu_check.py "$@"
