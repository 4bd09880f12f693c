#!/usr/bin/env bash
# Create .venv at the repo root, install kinema4d with the CPU build of torch, then (unless --no-demo) run the
# kinematic control demo and a 4D rollout of the bundled default model. torch is installed first and pinned: a bare `torch` requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/kinema4d control --demo --out out/control_demo
  .venv/bin/kinema4d simulate --demo --out out/simulate_demo
fi
